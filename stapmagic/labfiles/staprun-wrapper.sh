#!/bin/sh
# stapmagic lab: stapsh starts staprun inside its own scratch directory, so `stap -c "python3
# connect_a_few.py"` would look for the script there. Run the -c command in /root/work, where
# the lab keeps its workloads, after making the module path (relative to the scratch
# directory) absolute. Installed with dpkg-divert; the real staprun is staprun.distrib.
n=$#
for a do
    case $a in
        /*) ;;
        *.ko) a="$PWD/$a" ;;
    esac
    set -- "$@" "$a"
done
shift "$n"
cd /root/work || exit 1
exec /usr/bin/staprun.distrib "$@"
