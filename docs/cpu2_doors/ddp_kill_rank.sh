#!/bin/bash
# usage: kill_rank.sh OUT_DIR LOG [extra train args]; starts torchrun (2 ranks, gloo), kills rank 1 with -9 once
# ckpt.pt exists, reports how long the rest took to end.
out=$1; log=$2; sig=$3; shift 3
cd /work/wt_c
OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 nice -n 19 python3 -m torch.distributed.run --standalone --nproc_per_node=2 train.py \
  --data_dir=/tmp/wtc_ddp/data --out_dir=$out --n_layer=1 --n_head=2 --n_embd=16 --block_size=32 --batch_size=4 \
  --device=cpu --learning_rate=3e-3 --warmup_iters=2 --eval_iters=2 --log_interval=1 --max_iters=400000 \
  --eval_interval=50 --grad_accum=2 "$@" > $log 2>&1 &
agent=$!
for i in $(seq 600); do [ -f $out/ckpt.pt ] && break; sleep 0.2; done
sleep 1
r1=""; for p in $(pgrep -P $agent); do grep -qz '^RANK=1$' /proc/$p/environ 2>/dev/null && r1=$p; done
r0=""; for p in $(pgrep -P $agent); do grep -qz '^RANK=0$' /proc/$p/environ 2>/dev/null && r0=$p; done
echo "agent $agent rank0 $r0 rank1 $r1"
t0=$(date +%s.%N); kill -$sig $r1
while kill -0 $r0 2>/dev/null; do sleep 0.1; done; t1=$(date +%s.%N)
wait $agent; rc=$?; t2=$(date +%s.%N)
echo "rank 0 gone after $(echo "$t1 - $t0" | bc) s; torchrun exit $rc after $(echo "$t2 - $t0" | bc) s"
step=$(cd /work/wt_c && python3 -c "from checkpoint import load_checkpoint; print(load_checkpoint('$out/ckpt.pt')['meta']['step'])")
echo "ckpt.pt at step $step; resuming to $((step + 20))"
cd /work/wt_c && OMP_NUM_THREADS=1 nice -n 19 python3 -m torch.distributed.run --standalone --nproc_per_node=2 train.py \
  --data_dir=/tmp/wtc_ddp/data --out_dir=$out --n_layer=1 --n_head=2 --n_embd=16 --block_size=32 --batch_size=4 \
  --device=cpu --learning_rate=3e-3 --warmup_iters=2 --eval_iters=2 --log_interval=1 --max_iters=$((step + 20)) \
  --eval_interval=50 --grad_accum=2 --resume "$@" > $log.resume 2>&1
echo "resume exit $?"; tail -c 300 $log.resume | tr '\r' '\n' | tail -2
