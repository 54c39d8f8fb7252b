#!/bin/bash
# docker-entrypoint.sh of the local stand-in for docker.io/library/postgres (Debian's postgresql-15, built by
# k8s/local/images.sh). It does what the official image's entrypoint does for the VisionTrack chart, and no
# more: on an empty PGDATA, initdb with POSTGRES_USER and POSTGRES_PASSWORD, allow password logins over TCP,
# create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sql and *.sh; then exec postgres.
# Started as root it gives PGDATA to postgres (uid 999) and starts again as that user.
set -Eeuo pipefail

log() { echo "entrypoint: $*" >&2; }

# Arguments that are options are postgres's (`docker run image -c shared_buffers=256MB`).
if [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

# A server on the socket only, for the first-start SQL.
temp_server() {
    case $1 in
    start) pg_ctl --pgdata="$PGDATA" --wait --silent start -o "-c listen_addresses='' -p 5432" ;;
    stop) pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop ;;
    esac
}

init_database() {
    local user=${POSTGRES_USER:-postgres}
    local db=${POSTGRES_DB:-$user}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        log "POSTGRES_PASSWORD is empty: set it (or POSTGRES_HOST_AUTH_METHOD=trust for a throwaway database)"
        exit 1
    fi
    log "initialising $PGDATA (user $user, database $db)"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options
    initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") ${POSTGRES_INITDB_ARGS:-} >&2
    # initdb trusts local and loopback connections; everyone else logs in with the password.
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

    temp_server start
    local -a psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$user" --no-password)
    if [ "$db" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$db" <<<'CREATE DATABASE :"db";' >/dev/null
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
        *.sh)
            log "running $f"
            # shellcheck disable=SC1090 # scripts the image's user adds
            . "$f" ;;
        *.sql) log "running $f"; "${psql[@]}" --dbname "$db" -f "$f" >/dev/null ;;
        *) [ ! -e "$f" ] || log "ignoring $f" ;;
        esac
    done
    temp_server stop
    log "initialised; starting postgres"
}

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    init_database
fi
exec "$@"
