# kforge's apply lock on a host, held as a lease (see lock.rs): flock for at most 45 s,
# say "KF locked", then hold the lock while kforge's heartbeat lines keep coming (one
# every 10 s); end-of-file (kforge exited) or 30 s of silence (the connection died)
# releases it. Exit 75 when another apply holds it. The lock lives under /run: it is
# taken before the facts are read, so a host that preflight then refuses keeps nothing
# of kforge's on its disk.
mkdir -p /run/kforge
exec flock -w 45 -E 75 /run/kforge/apply.lock bash -c 'echo KF locked; while read -r -t 30 _; do :; done'
