#!/bin/bash
# Door 4 (and 1, 2, 3 on the real study): kill -9 the study during a pretraining, then during a finetune, rerun.
OUT=/tmp/wtc_study/out
CMD="nice -n 19 python3 -m experiments.study --preset=cpu --out_dir=$OUT --ft_iters=200 --max_examples=100 --m_inf=0,12 --compute_matched=false --finetune_filler= --inference_filler="
cd /work/wt_c
t() { echo "[$(date +%T)] $*"; }
tree_of() { local p=$1; for c in $(pgrep -P $p); do echo $c; tree_of $c; done; }
kill_main() {  # kill -9 the study's main process, then say which of its descendants are alive 5 s later
  local pid=$1 kids; kids=$(tree_of $pid | tr '\n' ' ')
  t "kill -9 $pid (descendants: $kids)"; kill -9 $pid; sleep 5
  local left=""; for k in $kids; do [ -d /proc/$k ] && ! grep -q '^State:.Z' /proc/$k/status && left="$left $k"; done
  t "5 s later, descendants alive: [${left}]"
}
t "run 1: $CMD"; $CMD > /tmp/wtc_study/run1.err 2>&1 & P=$!
until [ -f $OUT/seed0/PausePT/ckpt.pt ] || [ -f $OUT/seed0/StdPT/ckpt.pt ]; do sleep 1; done
t "a pretraining wrote its first checkpoint: $(ls $OUT/seed0/*/ckpt.pt)"
t "a second study into the same out_dir while run 1 is alive:"; $CMD > /tmp/wtc_study/second.err 2>&1; t "  exit $?: $(tail -1 /tmp/wtc_study/second.err)"
sleep 5; kill_main $P; wait $P; t "run 1 exit $? (137 = SIGKILL)"
ls -la $OUT/seed0/*/ | grep -i tmp; t "temp files under seed0: $(find $OUT -name '*.tmp' | wc -l)"
t "run 2: the same command"; $CMD > /tmp/wtc_study/run2.err 2>&1 & P=$!
until ls $OUT/seed0/*_*FT/ckpt.pt >/dev/null 2>&1; do sleep 1; done
t "a finetuning wrote its first checkpoint: $(ls $OUT/seed0/*_*FT/ckpt.pt)"
sleep 2; kill_main $P; wait $P; t "run 2 exit $? (137 = SIGKILL)"
t "temp files: $(find $OUT -name '*.tmp' | wc -l)"
stat -c '%Y %n' $OUT/seed0/*/ckpt.pt $OUT/seed0/*/results_*.json 2>/dev/null > /tmp/wtc_study/before_run3.txt
t "run 3: the same command"; start=$(date +%s); $CMD > /tmp/wtc_study/run3.err 2>&1; rc=$?
t "run 3 exit $rc after $(( $(date +%s) - start )) s"
stat -c '%Y %n' $OUT/seed0/*/ckpt.pt $OUT/seed0/*/results_*.json > /tmp/wtc_study/after_run3.txt
t "files finished before run 3 and untouched by it: $(comm -12 <(sort /tmp/wtc_study/before_run3.txt) <(sort /tmp/wtc_study/after_run3.txt) | wc -l) of $(wc -l < /tmp/wtc_study/before_run3.txt)"
t "temp files: $(find $OUT -name '*.tmp' | wc -l)"
python3 -c "
import glob, json
for p in sorted(glob.glob('$OUT/seed0/*/results_*.json')): json.load(open(p))
print('results files, all whole JSON:', len(glob.glob('$OUT/seed0/*/results_*.json')))
for p in sorted(glob.glob('$OUT/seed0/*/log.jsonl')):
    print(p.split('/')[-2], 'resumed_at:', [r['resumed_at'] for r in map(json.loads, open(p)) if 'resumed_at' in r])
"
