#!/bin/sh
# Install the Debian packages takhin needs to build, test and bench.
# As root, missing packages are installed; otherwise the command is printed.
PKGS="build-essential lua5.4 liblua5.4-dev lua-busted lua-cjson lua-sql-sqlite3 libjansson-dev nginx libnginx-mod-http-lua libluajit2-5.1-dev luajit2 lua-resty-core curl redis-server lua-socket librdkafka-dev kcat libzstd-dev zstd tar age restic prometheus wrk strace"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null || {
        echo "deps: apt-get install$missing failed" >&2; exit 1; }
    # Debian's nginx and redis-server packages start system services (ports
    # 80 and 6379); the specs and the benches start their own
    # (spec/openresty_spec.lua, bench/follow_bench.lua), so stop the ones
    # we installed.
    case " $missing " in *" nginx "*) service nginx stop >/dev/null 2>&1 || true ;; esac
    case " $missing " in *" redis-server "*) service redis-server stop >/dev/null 2>&1 || true ;; esac
    # prometheus (for promtool: spec/metrics_spec.lua, spec/openresty_spec.lua)
    # starts a server on port 9090, and the node exporter it recommends one
    # on 9100: stop both and keep them from starting at boot.
    case " $missing " in *" prometheus "*)
        for s in prometheus prometheus-node-exporter; do
            service "$s" stop >/dev/null 2>&1 || true
            { systemctl disable "$s" || update-rc.d "$s" disable; } >/dev/null 2>&1 || true
        done ;;
    esac
else
    echo "deps: missing packages; run as root:" >&2
    echo "    apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
