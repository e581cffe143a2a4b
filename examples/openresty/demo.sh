#!/bin/sh
# The OpenResty example in one command (make openresty-demo PORT=8080):
# fills in nginx.conf's placeholders into a prefix directory, starts nginx
# on 127.0.0.1:PORT with 2 workers, waits until it answers and prints the
# curl lines to try.  `make openresty-demo-stop` stops it through its pid.
#
# usage: sh examples/openresty/demo.sh start PORT DIR
#        sh examples/openresty/demo.sh stop DIR
#
# DIR (default build/openresty-demo) holds nginx.conf, nginx.pid,
# error.log, nginx's temp directories, the log (DIR/data, its snapshots
# in DIR/data/.snapshots) and what POST /restore makes (DIR/restored).
#
# Workers' user: started as root, nginx runs its workers as the `user`
# line says; the demo deliberately writes `user nobody nogroup` (never
# root workers) and makes DIR/data and DIR/restored theirs (chown), so
# the workers can create the log, its snapshots and restores.  Started as
# another user, nginx ignores the `user` line (a warning in error.log) and
# the workers run as that user, who owns DIR already.  Either way the
# workers must be able to read lua/, build/luajit/ and examples/openresty/
# of this checkout: as root, the script checks that `nobody` can.
#
# The LuaJIT module must be built first (`make openresty-demo` runs
# `make luajit`).  Needs Debian's nginx, libnginx-mod-http-lua,
# lua-resty-core and curl (`make deps`).
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODULE_DIRS="/usr/lib/nginx/modules /usr/share/nginx/modules /usr/local/nginx/modules /etc/nginx/modules"
RESTY_DIRS="/usr/share/lua/5.1 /usr/local/share/lua/5.1 /usr/local/openresty/lualib /usr/local/lib/lua"

die() { echo "openresty-demo: $*" >&2; exit 1; }

# The first directory of $1 (a list) holding file $2.
find_in() {
    for d in $1; do [ -f "$d/$2" ] && { echo "$d"; return 0; }; done
    return 1
}

# The pid in DIR/nginx.pid when that nginx runs with DIR as its prefix.
running_pid() {
    pid=$(cat "$1/nginx.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-p $1 " || return 1
    echo "$pid"
}

start() {
    port=$1; dir=$2
    case "$port" in ''|*[!0-9]*) die "PORT must be a number, not '$port'" ;; esac
    PATH="$PATH:/usr/sbin:/sbin"
    nginx=$(command -v nginx) || die "nginx is not installed (make deps)"
    mods=$(find_in "$MODULE_DIRS" ngx_http_lua_module.so) || die "libnginx-mod-http-lua is not installed (make deps)"
    [ -f "$mods/ndk_http_module.so" ] || die "$mods/ndk_http_module.so is missing (libnginx-mod-http-ndk)"
    resty=$(find_in "$RESTY_DIRS" resty/core.lua) || die "lua-resty-core is not installed (make deps)"
    command -v curl >/dev/null || die "curl is not installed (make deps)"
    [ -f "$ROOT/build/luajit/takhin/core.so" ] || die "build/luajit/takhin/core.so is missing: run make luajit"

    mkdir -p "$dir" || die "cannot create $dir"
    dir=$(cd "$dir" && pwd)
    if pid=$(running_pid "$dir"); then
        die "already running (pid $pid, prefix $dir); stop it with: make openresty-demo-stop"
    fi
    mkdir -p "$dir/data" "$dir/restored"

    if [ "$(id -u)" = 0 ]; then
        user=nobody
        group=$(id -gn nobody 2>/dev/null) || die "there is no user nobody to run the workers as"
        for f in "$ROOT/lua/takhin/init.lua" "$ROOT/build/luajit/takhin/core.so" \
                 "$ROOT/examples/openresty/handler.lua" "$dir/data"; do
            runuser -u nobody -- test -r "$f" ||
                die "the workers run as nobody, who cannot read $f: make its directories readable (chmod o+rx) or run the demo from elsewhere"
        done
        chown -R "$user:$group" "$dir/data" "$dir/restored" || die "chown $dir/data failed"
        who="$user (the master runs as root)"
    else
        user=$(id -un); group=$(id -gn)
        who="$user"
    fi

    sed -e "s|{{NDK_MODULE}}|$mods/ndk_http_module.so|g" \
        -e "s|{{LUA_MODULE}}|$mods/ngx_http_lua_module.so|g" \
        -e "s|{{USER}}|$user|g" -e "s|{{GROUP}}|$group|g" -e "s|{{WORKERS}}|2|g" \
        -e "s|{{PREFIX}}|$dir|g" -e "s|{{PORT}}|$port|g" \
        -e "s|{{TAKHIN_LUA}}|$ROOT/lua|g" -e "s|{{TAKHIN_CPATH}}|$ROOT/build/luajit|g" \
        -e "s|{{RESTY_CORE}}|$resty|g" -e "s|{{HANDLER_DIR}}|$ROOT/examples/openresty|g" \
        -e "s|{{DATA_DIR}}|$dir/data|g" -e "s|{{RESTORE_DIR}}|$dir/restored|g" \
        -e "s|{{MAX_SEGMENT_SIZE}}|67108864|g" -e "s|{{SNAPSHOT_INTERVAL}}|1m|g" \
        -e "s|{{SNAPSHOT_KEEP}}|10|g" \
        "$ROOT/examples/openresty/nginx.conf" > "$dir/nginx.conf" || die "cannot write $dir/nginx.conf"
    if grep -n '{{' "$dir/nginx.conf" >&2; then die "$dir/nginx.conf: placeholders left (above)"; fi

    "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" ||
        die "nginx did not start (port $port in use?); see $dir/error.log"
    i=0
    until curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/info"; do
        i=$((i + 1))
        if [ "$i" -ge 50 ]; then
            tail -n 20 "$dir/error.log" >&2
            stop "$dir" >/dev/null
            die "nginx does not answer on port $port (error log above); stopped it"
        fi
        sleep 0.1
    done
    pid=$(running_pid "$dir") || die "nginx answered but $dir/nginx.pid names no running nginx"
    u="http://127.0.0.1:$port"
    cat <<EOF
takhin's OpenResty example runs: nginx pid $pid on $u, 2 workers as $who.
  config $dir/nginx.conf, error log $dir/error.log
  log    $dir/data (snapshots in $dir/data/.snapshots), restores in $dir/restored

Try:
  curl -s -X POST '$u/append?key=user-1' --data-binary 'hello'
  curl -s '$u/read?offset=0'
  curl -s -X POST '$u/snapshot'
  curl -s '$u/snapshots'
  curl -s -X POST '$u/verify?id=ID'               # ID from /snapshot or /snapshots
  curl -s -X POST '$u/restore?id=ID&target=copy1'
  curl -s -X POST '$u/drain?cursor=shipper&max=10'
  curl -s '$u/info'
  curl -s '$u/metrics'

Stop it:
  make openresty-demo-stop$( [ "$dir" = "$ROOT/build/openresty-demo" ] || echo " OPENRESTY_DEMO_DIR=$dir")
  (or: kill -QUIT \$(cat $dir/nginx.pid))
EOF
}

stop() {
    dir=$(cd "$1" 2>/dev/null && pwd) || { echo "openresty-demo: not running (no $1)"; return 0; }
    if ! pid=$(running_pid "$dir"); then
        echo "openresty-demo: not running (no nginx with prefix $dir)"
        return 0
    fi
    kill -QUIT "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -ge 100 ] && die "nginx $pid did not stop within 10 s of SIGQUIT"
        sleep 0.1
    done
    echo "openresty-demo: stopped nginx $pid (the log stays in $dir/data)"
}

case "${1:-}" in
    start) start "${2:-8080}" "${3:-$ROOT/build/openresty-demo}" ;;
    stop) stop "${2:-$ROOT/build/openresty-demo}" ;;
    *) die "usage: $0 start PORT [DIR] | stop [DIR]" ;;
esac
