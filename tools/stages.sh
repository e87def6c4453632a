# Sourced by the benchmark scripts of tools/: resumable stages with their wall minutes.
# stage NAME DONE_FILE COMMAND...: run COMMAND unless DONE_FILE exists and is not empty, then
# append "NAME M min" to $out/minutes.txt ($out: the calling script's output folder).
stage() {
    local name=$1 done=$2 began
    shift 2
    if [ -s "$done" ]; then echo "== $name: done before ($done)"; return; fi
    echo "== $name: $*"
    began=$(date +%s)
    "$@"
    echo "$name $(( ($(date +%s) - began + 30) / 60 )) min" >> "$out/minutes.txt"
}
