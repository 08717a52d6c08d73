# The broker image of `./dev images` (no registry needed): Debian's Mosquitto laid out
# like eclipse-mosquitto:2 — config in /mosquitto/config/mosquitto.conf, persistence in
# /mosquitto/data, the `mosquitto` user (uid/gid 1883, as there), port 1883. Built on
# the base root filesystem `./dev images` makes with debootstrap.
#   FOGCHARGE_BROKER_IMAGE=fogcharge-mosquitto:2 docker compose -f deploy/regions.yml up
ARG BASE=fogcharge-base:bookworm
FROM ${BASE}
RUN groupadd --system --gid 1883 mosquitto \
    && useradd --system --uid 1883 --gid 1883 --home-dir /var/lib/mosquitto --no-create-home \
       --shell /usr/sbin/nologin mosquitto \
    && apt-get update \
    && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && printf '%s\n' 'listener 1883' 'persistence true' 'persistence_location /mosquitto/data/' \
       'log_dest stdout' > /mosquitto/config/mosquitto.conf \
    && chown -R 1883:1883 /mosquitto
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# /mosquitto/data only: the generated configs log to stdout, and an anonymous volume for
# /mosquitto/log would outlive `docker compose down` followed by `down -v`
VOLUME ["/mosquitto/data"]
EXPOSE 1883
# as eclipse-mosquitto:2: started as root, Mosquitto drops to its `mosquitto` user
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
