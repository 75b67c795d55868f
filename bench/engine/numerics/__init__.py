"""Numerical analysis against an fp32 baseline: divergence, noise floor, activation ranges.

Design decision: the divergence pass is a separate, short, deterministic pass, not the timed loop,
so timing stays clean (no host syncs, hooks or extra copies inside it; METHODS rule 2). It runs
once per (model, workload, precision) at the numerics batch size and sequence length, after that
triple's first case is timed, outside its timing and memory windows; the result is cached and
attached to every case of the triple, with the shape it used (`batch_size`, `seq_len`, `steps`).
The fp32 reference of each (model, workload) is computed once and kept on the CPU.

Fair comparison (METHODS rules 9-11): every precision starts from a copy of the same pristine
fp32 weights (`CaseRunner.pristine_model`), sees the same batches in the same order (the same MLM
masks for BERT; `bench.engine.data`), with dropout off and a fixed seed. The fp32 baseline runs with
TF32 off and `torch.use_deterministic_algorithms(True)` (warn_only), cuDNN deterministic, and
`CUBLAS_WORKSPACE_CONFIG=:4096:8` on CUDA; the flags and the global RNG are restored afterwards.
The training step is `bench.engine.workloads.train_step_fn` (AdamW, lr 1e-4, the mode's GradScaler).
`generate` cases are checked on their prompt's (prefill) logits, like `infer`.

What pure fp16 training does (measured on gpt2-tiny and bert-tiny, CPU): it fails at the very
first AdamW step, at the workload's default settings (lr 1e-4, eps 1e-8). The second moment
(1 - beta2) * g^2 underflows to 0 in fp16 for most entries (|g| < ~7.7e-3), and eps = 1e-8 rounds
to 0 in fp16, so the update m / (sqrt(v) + eps) divides by zero: the weights become inf/NaN
(verdict `nan`, first_nan_step 0, nan_source "weights"). With eps = 1e-4 the same run stays
finite. amp_fp16 keeps fp32 master weights and optimizer state, and stays within tolerance.

Noise floor: fp32 runs twice (TorchBench requires two eager runs to match) and, for models up to
`fp64_max_parameters`, once in fp64, so every mode's divergence sits next to fp32's own error.

[numerics] table (all optional; defaults in brackets):
  enabled [true]              run the numerics passes at all
  train_steps [30]            steps of the training divergence pass
  batch_size [smallest of the sweep], seq_len [shortest of the sweep]
  warn_rel_div [0.01]         training: max |loss - fp32| / |fp32| above this -> warn
  diverged_rel_div [0.05]     training: above this -> diverged
  warn_grad_sqnr_db [20]      training: first-step gradient SQNR (overall) below this -> warn
  warn_skipped_frac [0.25]    training: GradScaler skipped more than this fraction -> warn
  warn_sqnr_db [30]           inference: logits SQNR below this -> warn
  diverged_sqnr_db [20]       inference: below this -> diverged (torchao's 20 dB bar)
  diverged_cosine [0.99]      inference: cosine below this -> diverged (PyTorch same())
  warn_top1_agreement [0.9]   inference: top-1 token agreement below this -> warn
  noise_floor [true]          the fp32 repeat and fp64 runs
  fp64_max_parameters [150000000]  largest model given an fp64 reference (0: never)
  activations [true]          the activation range analysis

Verdicts: `nan` (NaN/inf loss, gradients or weights in training; non-finite logits in inference;
with a GradScaler, non-finite gradients are skipped steps, not NaN), else `diverged`, else `warn`,
else `ok`; `reasons` says which threshold decided it. null when fp32 itself went non-finite
(nothing to compare against) or the analysis failed.

The `numerics` object of a case (training):
  kind "train", verdict, reasons, batch_size, seq_len, steps, data, tokenizer, data_wrapped,
  reference, deterministic_algorithms, thresholds
  loss[]             this precision's loss per step (stops at the first non-finite step)
  baseline_loss[]    fp32's loss per step
  abs_div[], rel_div[]   |loss - fp32| and |loss - fp32| / |fp32| per step
  max_rel_div, mean_rel_div, final_rel_div   (NaN when the run went non-finite)
  tolerance          = warn_rel_div; first_exceed_step: first step above it (or null)
  first_nan_step, nan_source ("loss" | "gradients" | "weights"); baseline_nan_step (fp32's)
  grad_sqnr_db       {overall, embeddings, attention, mlp, norms, head}: first-step gradients vs
                     fp32, in dB (inf: identical; tied weights count in each of their groups)
  scaler             null, or {scale[] per step, skipped_steps, skipped_at[]}
  noise_floor        {fp32_runs_identical, fp32_repeat_max_rel_div, fp64_reference, fp64_error,
                      fp32_vs_fp64_max_rel_div, fp32_vs_fp64_final_rel_div,
                      fp32_vs_fp64_grad_sqnr_db, max_rel_div (the floor: the larger of the two)}
  floor_ratio        max_rel_div / noise_floor.max_rel_div (null where the floor is 0)
The `numerics` object of a case (inference and generate):
  kind "infer", verdict, reasons, shape and settings as above, and vs fp32 logits:
  max_abs_err, rel_rmse (rmse / rms(fp32)), sqnr_db, cosine, top1_agreement, kl_mean (mean over
  positions of KL(fp32 || mode), nats), rmse_ratio (rmse(fp64, mode) / rmse(fp64, fp32); null
  without fp64), baseline_finite, outputs ("prompt (prefill) logits", generate only),
  noise_floor {fp32_runs_identical, fp32_repeat_max_abs_err, fp64_reference, fp64_error,
  fp32_vs_fp64_max_abs_err, fp32_vs_fp64_rel_rmse, fp32_vs_fp64_sqnr_db, sqnr_db (the floor)}
Both: fp32 cases carry `activations` [{module, max_abs, and for each format F of fp16, e4m3
and e5m2: F_headroom_log2, F_overflow, frac_below_F_normal; frac_below_bf16_normal;
frac_below_e4m3_normal_scaled}] (zeros are not counted as underflow; see activations.py);
fp16 and amp_fp16 cases carry `activation_summary` {format "fp16", worst_module, max_abs,
min_fp16_headroom_log2, fp16_overflow_modules, fp16_underflow_modules (over 1% of values below
fp16's smallest normal), max_frac_below_fp16_normal}; the fp8 modes the same for "e4m3"
(underflow after tensorwise scaling: max_frac_below_e4m3_normal_scaled).
A failed analysis is {"verdict": null, "error": "..."}.

Modules: config ([numerics] table), data batches come from bench.engine.data, passes (the
training and forward passes), metrics (error measures), activations, verdicts (the rules),
analyzer (NumericsAnalyzer: the passes per case, cached per model).
"""
