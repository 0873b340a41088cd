#!/bin/sh
# An example hook set for the agent's exec driver (driver = "exec"): a
# "database" kept in files, one directory per agent. Copy it and replace each
# branch with your database's commands; the protocol is in
# crates/interlock-agent/src/drivers/exec.rs.
#
#   [exec]
#   command = ["/etc/interlock/hooks/files.sh", "/var/lib/interlock/fake-db"]
#   timeout_ms = 10000
#
# Called as: files.sh STATE_DIR ACTION, with the action's JSON on stdin and in
# INTERLOCK_* variables. Exit 0: done. Anything else: failed, and the last
# line on stderr says why. stderr goes into the agent's log.
#
# Files in STATE_DIR:
#   REPLICA.primary   exists while REPLICA accepts writes; holds "EPOCH TOKEN"
#                     (a real database keeps these in a table its writers check)
#   REPLICA.position  its replication position (0 if absent)
#   REPLICA.follows   "PRIMARY ADDRESS" this standby replicates from
#   actions.log       one line per call: unix ms, action, replica
#   refuse-demote     if present, a graceful demote fails (the agent then fences)
#   hang-fence        if present, a fence hangs (the agent kills it at timeout_ms)
set -eu

state="$1"
action="$2"
mkdir -p "$state"
replica="${INTERLOCK_REPLICA:-}"
echo "$(date +%s%3N) $action $replica" >> "$state/actions.log"

case "$action" in
status)
    # {"replicas": [{"id", "position", "lag", "healthy", "primary"}]}
    printf '{"replicas": ['
    sep=""
    for r in $(echo "${INTERLOCK_REPLICAS:-}" | tr ',' ' '); do
        primary=false
        [ -f "$state/$r.primary" ] && primary=true
        position=$(cat "$state/$r.position" 2>/dev/null || echo 0)
        printf '%s{"id": "%s", "position": %s, "lag": 0, "healthy": true, "primary": %s}' \
            "$sep" "$r" "$position" "$primary"
        sep=", "
    done
    printf ']}\n'
    ;;
promote)
    # Accept writes; record the epoch and fencing token for the writers.
    echo "$INTERLOCK_EPOCH $INTERLOCK_TOKEN" > "$state/$replica.primary"
    echo "promoted $replica at epoch $INTERLOCK_EPOCH (token $INTERLOCK_TOKEN)" >&2
    ;;
demote)
    if [ -f "$state/refuse-demote" ]; then
        echo "demote of $replica refused (refuse-demote is set)" >&2
        exit 1
    fi
    rm -f "$state/$replica.primary"
    echo "demoted $replica: $INTERLOCK_REASON" >&2
    ;;
fence)
    # By force: a real hook kills the database's processes and checks they are gone.
    while [ -f "$state/hang-fence" ]; do sleep 0.1; done
    rm -f "$state/$replica.primary"
    echo "fenced $replica: $INTERLOCK_REASON" >&2
    ;;
follow)
    # A standby replicates from the primary's database at this address.
    echo "$INTERLOCK_PRIMARY $INTERLOCK_PRIMARY_ADDRESS" > "$state/$replica.follows"
    echo "$replica follows $INTERLOCK_PRIMARY at $INTERLOCK_PRIMARY_ADDRESS" >&2
    ;;
routing)
    # The table arrives on stdin as {"routing": {"service", "version", "weights"}}.
    cat > "$state/routing.json"
    ;;
runbook_hook)
    # A runbook's hook step: $INTERLOCK_HOOK names it; INTERLOCK_DRILL=1 is a
    # drill (leave production alone). This example knows one, smoke-test:
    # every replica's state file is readable. What it prints is recorded.
    case "$INTERLOCK_HOOK" in
    smoke-test)
        ls "$state" >/dev/null || { echo "smoke-test: $state is unreadable" >&2; exit 1; }
        echo "smoke-test ok (drill=$INTERLOCK_DRILL)"
        ;;
    *)
        echo "no hook $INTERLOCK_HOOK" >&2
        exit 2
        ;;
    esac
    ;;
*)
    echo "unknown action: $action" >&2
    exit 2
    ;;
esac
