#!/usr/bin/env bash
# corepop vs Dovecot over TLS: run.sh's full-download workload, with every connection on
# implicit TLS (POP3S) or STARTTLS, and the same Markdown table of medians and ratios.
#
#   sudo benches/compare/tls.sh            # default run, about 2.5 minutes on 2 cores
#   QUICK=1 sudo benches/compare/tls.sh    # smoke run, under a minute
#
# A wrapper: it runs run.sh with TLS=$TLS_MODE. run.sh then makes a throw-away CA and a
# localhost certificate with openssl, gives both servers TLS listeners on it, runs every
# `corepop bench` with `--tls TLS_MODE --tls-ca <the CA>`, and adds the negotiated protocol and
# the share of resumed handshakes to the table's notes (see the top of run.sh).
#
# Environment: every knob of run.sh (QUICK, USERS, MSGS, REPS, DURATION, WARMUP, CONCURRENCY,
# MODE, IDLE, COREPOP, BUILD, COREPOP_THREADS, DOVECOT_POP3_SERVICE_COUNT, RESULTS, KEEP,
# TMPDIR; same defaults), plus (defaults in brackets):
#   TLS_MODE [implicit]  implicit (the servers' POP3S listeners) or starttls (STLS on their
#                        plaintext listeners)
#   TLS_RESUME [1]       0 = `bench --tls-no-resume`: full handshakes only
#   KEY [rsa2048]        server key: rsa2048 or ec256 (ECDSA P-256)
set -euo pipefail

TLS_MODE=${TLS_MODE:-implicit}
case $TLS_MODE in
  implicit | starttls) ;;
  *)
    echo "tls: error: TLS_MODE must be implicit or starttls" >&2
    exit 1
    ;;
esac
export TLS=$TLS_MODE
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run.sh" "$@"
