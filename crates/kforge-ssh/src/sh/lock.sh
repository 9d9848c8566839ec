# kforge's apply lock on a host, held as a lease (see lock.rs): flock for at most 45 s,
# say "KF locked", then hold the lock while kforge's heartbeat lines keep coming (one
# every 10 s); end-of-file (kforge exited) or 30 s of silence (the connection died)
# releases it. Exit 75 when another apply holds it.
mkdir -p /var/lib/kforge
exec flock -w 45 -E 75 /var/lib/kforge/apply.lock bash -c 'echo KF locked; while read -r -t 30 _; do :; done'
