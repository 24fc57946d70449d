#!/bin/sh
# stapmagic lab: /usr/bin/staprun (the packaged one is diverted to staprun.distrib).
#
# A shell script, not Python: it starts on every run, twice (staprun, then staprun -d to
# unload), and one guest Python start-up cost 0.3-4 s under TCG (bench/RESULTS.md, issue 15).
#
# Two things the stock staprun does not do for a remote (`stap --remote`) run:
# - stapsh starts staprun in its scratch directory, so `stap -c "python3 connect_a_few.py"`
#   would look for the script there: run in /root/work, where the lab keeps its workloads
#   (module paths, relative to the scratch directory, are made absolute first);
# - when the run is stopped (SIGINT -> stapsh `quit`), stapio unloads the module but leaves the
#   -c command running, re-parented to init and holding the ssh channel open, so the host's
#   stap never sees the end of its output. stapsh, this wrapper, staprun/stapio and the -c
#   command share stapsh's process group (seen with ps on the lab): whatever else is left of
#   that group when staprun exits is ended here.
REAL=${STAPMAGIC_REAL_STAPRUN:-/usr/bin/staprun.distrib}
has_cmd=0
for a do
	shift
	case $a in
	/*) ;;
	*.ko) a=$PWD/$a ;;
	esac
	[ "$a" = -c ] && has_cmd=1
	set -- "$@" "$a"
done
cd /root/work || exit 1

# A background command starts with SIGINT and SIGQUIT ignored; staprun and stapio install
# handlers of their own for both (seen in /proc/PID/status on the lab), so that is harmless.
"$REAL" "$@" &
child=$!
for sig in INT TERM HUP QUIT; do
	trap "kill -$sig $child 2>/dev/null" $sig
done
# wait returns early (status > 128) when a trapped signal arrives: wait again until the
# child is gone, then take its own status.
while :; do
	wait $child
	rc=$?
	[ $rc -gt 128 ] && kill -0 $child 2>/dev/null || break
done
trap - INT TERM HUP QUIT

# Members of this process group other than its leader (stapsh), this wrapper and its own
# children (ps): what stapio left of the -c command. A file, not a pipe, so that no
# subshell of this script is in the list.
end_leftovers() {
	pgid=$(($(ps -o pgid= -p $$)))
	list=$(mktemp) || return 1
	ps -e -o pid= -o pgid= -o ppid= >"$list"
	found=1
	while read -r p g pp; do
		if [ "$g" = "$pgid" ] && [ "$p" != $$ ] && [ "$p" != "$pgid" ] && [ "$pp" != $$ ]; then
			kill "-$1" "$p" 2>/dev/null && found=0
		fi
	done <"$list"
	rm -f "$list"
	return $found
}

# Only a run with a -c command has one to end; stapio also calls `staprun -d MODULE` (through
# this wrapper) to unload, and that instance must leave the group alone.
if [ $has_cmd = 1 ] && end_leftovers TERM; then
	sleep 0.5
	end_leftovers KILL
fi
exit $rc
