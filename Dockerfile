# One image for every replica (and the one-shot migrate and nginx-config services of docker-compose.yml).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY hypercheckout ./hypercheckout
COPY nginx ./nginx
COPY templates ./templates
COPY static ./static
# Editable, so the package finds nginx/, templates/ and static/ beside it exactly as in a checkout.
RUN pip install --no-cache-dir -e . \
 && useradd --system --uid 10001 --user-group --no-create-home hypercheckout
USER hypercheckout

ENV HC_HOST=0.0.0.0 \
    HC_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["hypercheckout", "serve"]
