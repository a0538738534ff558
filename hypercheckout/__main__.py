from hypercheckout.cli import main

raise SystemExit(main())
