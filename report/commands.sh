#!/bin/sh
# The commands `python3 scripts/report.py --quick` ran, in order (from the repository root).
# Lines marked "kept" were finished by an earlier run of the same report and not run again.
build/train --preset baby --mix recall:1.0 --steps 4500 --seed 1 --out report/work/recall-warmup.ckpt --log report/work/train-recall-warmup.jsonl  # kept from an earlier run
build/train --init-from report/work/recall-warmup.ckpt --context 128 --batch 12 --mix recall:0.5 --steps 1500 --seed 2 --out report/work/recall.ckpt --log report/work/train-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full --context 128 --streams 8 --json >> report/raw/t1-full.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full --context 128 --streams 20 --json >> report/raw/t1-full.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:16 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv sink:4,window:12 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:8,8 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:16 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv snapkv:8,8 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv knorm:16 --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:8,8+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:16+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv window:16 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv sink:4,window:12 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:8,8 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:16 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv snapkv:8,8 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv knorm:16 --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:8,8+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:16+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-16.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:32 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv sink:4,window:28 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:16,16 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:32 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv snapkv:16,16 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv knorm:32 --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:16,16+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:32+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv window:32 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv sink:4,window:28 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:16,16 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:32 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv snapkv:16,16 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv knorm:32 --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:16,16+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:32+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-32.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:64 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv sink:4,window:60 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:32,32 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:64 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv snapkv:32,32 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv knorm:64 --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:32,32+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv tova:64+pyramid --context 128 --streams 8 --json >> report/raw/t1-quality-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv window:64 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv sink:4,window:60 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:32,32 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:64 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv snapkv:32,32 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv knorm:64 --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv h2o:32,32+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv tova:64+pyramid --context 128 --streams 20 --json >> report/raw/t1-recall-64.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:64 --context 2048 --prefill 128 --streams 1 --json --curve 16 >> report/raw/t1-stream.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv sink:4,window:60 --context 2048 --prefill 128 --streams 1 --json --curve 16 >> report/raw/t1-stream.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+fp16 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+int8 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+int4 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+int2 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+int4+hadamard --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+int2+fpkeep:4,32 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+kivi4:16,32 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+kivi2:16,32 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+lowrank:16 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+lowrank:8 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+minicache:2 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv full+minicache:2,90 --context 128 --streams 8 --json >> report/raw/t1-storage.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full+int8 --context 128 --streams 20 --json >> report/raw/t1-storage-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full+int4 --context 128 --streams 20 --json >> report/raw/t1-storage-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full+int2 --context 128 --streams 20 --json >> report/raw/t1-storage-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full+kivi4:16,32 --context 128 --streams 20 --json >> report/raw/t1-storage-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval recall --kv full+kivi2:16,32 --context 128 --streams 20 --json >> report/raw/t1-storage-recall.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval attention --out report/work --context 128 --data data/tinyshakespeare.txt --json >> report/raw/t1-attention.jsonl  # kept from an earlier run
build/train --preset baby --heads 8 --steps 1500 --attn mha --seed 3 --out report/work/attn-mha.ckpt --log report/work/train-attn-mha.jsonl  # kept from an earlier run
build/train --preset baby --heads 8 --steps 1500 --attn gqa:4 --seed 3 --out report/work/attn-gqa4.ckpt --log report/work/train-attn-gqa4.jsonl  # kept from an earlier run
build/train --preset baby --heads 8 --steps 1500 --attn gqa:2 --seed 3 --out report/work/attn-gqa2.ckpt --log report/work/train-attn-gqa2.jsonl  # kept from an earlier run
build/train --preset baby --heads 8 --steps 1500 --attn mqa --seed 3 --out report/work/attn-mqa.ckpt --log report/work/train-attn-mqa.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mha.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-eval-mha.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mha.ckpt --eval report/work/val.txt --kv full --json --context 1024 --prefill 992 --streams 1 >> report/raw/t2-eval-mha.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-gqa4.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-eval-gqa4.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-gqa4.ckpt --eval report/work/val.txt --kv full --json --context 1024 --prefill 992 --streams 1 >> report/raw/t2-eval-gqa4.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-gqa2.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-eval-gqa2.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-gqa2.ckpt --eval report/work/val.txt --kv full --json --context 1024 --prefill 992 --streams 1 >> report/raw/t2-eval-gqa2.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mqa.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-eval-mqa.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mqa.ckpt --eval report/work/val.txt --kv full --json --context 1024 --prefill 992 --streams 1 >> report/raw/t2-eval-mqa.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mha.ckpt --kv-heads 4 --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-pool-4.jsonl  # kept from an earlier run
build/train --init-from report/work/attn-mha.ckpt --attn gqa:4 --steps 75 --warmup 5 --lr 5e-4 --seed 4 --out report/work/uptrain-4.ckpt --log report/work/train-uptrain-4.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/uptrain-4.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-uptrained-4.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mha.ckpt --kv-heads 2 --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-pool-2.jsonl  # kept from an earlier run
build/train --init-from report/work/attn-mha.ckpt --attn gqa:2 --steps 75 --warmup 5 --lr 5e-4 --seed 4 --out report/work/uptrain-2.ckpt --log report/work/train-uptrain-2.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/uptrain-2.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-uptrained-2.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/attn-mha.ckpt --kv-heads 1 --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-pool-1.jsonl  # kept from an earlier run
build/train --init-from report/work/attn-mha.ckpt --attn mqa --steps 75 --warmup 5 --lr 5e-4 --seed 4 --out report/work/uptrain-1.ckpt --log report/work/train-uptrain-1.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/uptrain-1.ckpt --eval report/work/val.txt --kv full --json --streams 16 >> report/raw/t2-uptrained-1.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/bench --attention --attention-t 128,256,512,1024,2048,4096 --json >> report/raw/t3-flash.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv paged:16 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv paged:16+int8 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv paged:16+int4 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:32+paged:16 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv h2o:16,16+paged:16 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval report/work/val.txt --kv window:32+paged:16+int4 --context 128 --streams 8 --json >> report/raw/t3-paged.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval prefix --kv paged:16 --context 128 --prefill 96 --data data/tinyshakespeare.txt --json >> report/raw/t3-prefix.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval tier --kv paged:16 --transfer-us 10 --context 128 --data data/tinyshakespeare.txt --json --prefetch resident >> report/raw/t3-tier.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval tier --kv paged:16 --transfer-us 10 --context 128 --data data/tinyshakespeare.txt --json --fast 2 --prefetch reactive >> report/raw/t3-tier.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval tier --kv paged:16 --transfer-us 10 --context 128 --data data/tinyshakespeare.txt --json --fast 2 --prefetch predictive >> report/raw/t3-tier.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval tier --kv paged:16 --transfer-us 10 --context 128 --data data/tinyshakespeare.txt --json --fast 4 --prefetch reactive >> report/raw/t3-tier.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval tier --kv paged:16 --transfer-us 10 --context 128 --data data/tinyshakespeare.txt --json --fast 4 --prefetch predictive >> report/raw/t3-tier.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval reuse --reuse lsh --context 128 --data data/tinyshakespeare.txt --json >> report/raw/t3-reuse.jsonl  # kept from an earlier run
OMP_NUM_THREADS=1 build/infer --ckpt report/work/recall.ckpt --eval reuse --reuse semshare --context 128 --data data/tinyshakespeare.txt --json >> report/raw/t3-reuse.jsonl  # kept from an earlier run
