. /work/venv/bin/activate
for seed in 1337 1 2; do
  for v in default mvue_fc_false mvue_false; do
    case $v in default) extra="";; mvue_fc_false) extra="--set mvue_fc=false";; mvue_false) extra="--set mvue=false";; esac
    sparse24-train --config tiny --set method=srste --set seed=$seed $extra --out runs/${v}_s$seed --no-progress > log_${v}_s$seed.txt 2>&1
    echo "$v $seed rc=$? $(grep -o 'val loss [0-9.]*' log_${v}_s$seed.txt | tail -1)"
  done
done
