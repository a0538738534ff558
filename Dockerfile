# One image for every replica (and the one-shot migrate and nginx-config services of docker-compose.yml).
# The image installs the wheel, as `pip install` or `pipx install` would anywhere else: the package carries its
# templates, static files, nginx template, Lua scripts and migrations, so nothing of the source tree is kept.
FROM python:3.11-slim AS wheel

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
# The package reaches the top-level templates/, static/ and nginx/ through links of the same names; the wheel
# turns them into folders of its own.
COPY hypercheckout ./hypercheckout
COPY nginx ./nginx
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir build \
 && python -m build --wheel --outdir /dist .

FROM python:3.11-slim

COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/hypercheckout-*.whl \
 && rm -r /tmp/dist \
 && useradd --system --uid 10001 --user-group --no-create-home hypercheckout
USER hypercheckout

ENV HC_HOST=0.0.0.0 \
    HC_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["hypercheckout", "serve"]
