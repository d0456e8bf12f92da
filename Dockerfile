# The actorbus image: `actor` on PATH, the examples beside it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md PROTOCOL.md ./
COPY actorbus ./actorbus
COPY examples ./examples
RUN pip install --no-cache-dir . && useradd --create-home actor \
    && mkdir -p /home/actor/.actor/keys && chown -R actor /home/actor/.actor \
    && chmod 700 /home/actor/.actor/keys
USER actor
ENV ACTOR_HOME=/home/actor/.actor
ENTRYPOINT ["actor"]
