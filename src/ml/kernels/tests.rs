//! Tests of the recurrent kernels: finite differences, agreement with the reference,
//! padding and direction semantics. Inputs come from a fixed xorshift generator.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use super::*;

const CELLS: [CellKind; 3] = [CellKind::Rnn, CellKind::Lstm, CellKind::Gru];

/// Uniform values in `[-scale, scale]` from a xorshift generator seeded with `seed`.
fn pseudo_random(len: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `xs_proj (B, T, G*H)`, `w_hh (G*H, H)`, `b_hh (G*H)` as plain tensors.
fn layer_inputs(
    cell: CellKind,
    dims: (usize, usize, usize),
    seed: u64,
    dtype: DType,
) -> [Tensor; 3] {
    let (b, t, h) = dims;
    let gh = cell.gates() * h;
    let make = |len, seed, scale, shape: &[usize]| {
        let data = pseudo_random(len, seed, scale);
        Tensor::from_vec(data, shape, &Device::Cpu).and_then(|x| x.to_dtype(dtype)).unwrap()
    };
    [
        make(b * t * gh, seed, 1.5, &[b, t, gh]),
        make(gh * h, seed + 1, 0.8, &[gh, h]),
        make(gh, seed + 2, 0.5, &[gh]),
    ]
}

fn weighted_sum(out: &Tensor, weights: &Tensor) -> Tensor {
    (out * weights).unwrap().sum_all().unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The signature shared by the layer functions.
type LayerFn =
    fn(&Tensor, &Tensor, &Tensor, CellKind, &Arc<Vec<usize>>, bool) -> candle_core::Result<Tensor>;

/// Output and gradients of the weighted sum of a layer's output.
fn run_with_grads(
    layer: LayerFn,
    inputs: &[Tensor; 3],
    cell: CellKind,
    lengths: &Arc<Vec<usize>>,
    reverse: bool,
    weights: &Tensor,
) -> (Vec<f64>, [Vec<f64>; 3]) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let out = layer(&vars[0], &vars[1], &vars[2], cell, lengths, reverse).unwrap();
    let grads = weighted_sum(&out, weights).backward().unwrap();
    let grad = |v: &Var| to_vec(grads.get(v).expect("every input gets a gradient"));
    (to_vec(&out), [grad(&vars[0]), grad(&vars[1]), grad(&vars[2])])
}

#[test]
fn fused_gradients_match_finite_differences_in_f64() {
    // Five rows: steps with four or more active rows take the transposed-weight product.
    let (dims, lengths) = ((5, 4, 3), Arc::new(vec![4, 2, 3, 4, 1]));
    for cell in CELLS {
        for reverse in [false, true] {
            let inputs = layer_inputs(cell, dims, 7, DType::F64);
            let weights =
                Tensor::from_vec(pseudo_random(60, 99, 1.0), (5, 4, 3), &Device::Cpu).unwrap();
            let (_, grads) =
                run_with_grads(recurrent_layer, &inputs, cell, &lengths, reverse, &weights);

            for (which, grad) in grads.iter().enumerate() {
                let base = to_vec(&inputs[which]);
                let loss_at = |k: usize, delta: f64| {
                    let mut data = base.clone();
                    data[k] += delta;
                    let mut args = inputs.clone();
                    args[which] =
                        Tensor::from_vec(data, inputs[which].shape(), &Device::Cpu).unwrap();
                    let out =
                        recurrent_layer(&args[0], &args[1], &args[2], cell, &lengths, reverse);
                    weighted_sum(&out.unwrap(), &weights).to_scalar::<f64>().unwrap()
                };
                for (k, &g) in grad.iter().enumerate() {
                    let fd = (loss_at(k, 1e-5) - loss_at(k, -1e-5)) / 2e-5;
                    assert!(
                        (fd - g).abs() < 1e-8 + 1e-6 * g.abs(),
                        "{cell:?} reverse={reverse} input {which} element {k}: fd {fd} vs {g}"
                    );
                }
            }
        }
    }
}

#[test]
fn fused_f32_matches_reference_outputs_and_gradients_on_mixed_lengths() {
    for (dims, lengths) in [((5, 7, 8), vec![7, 3, 1, 7, 5]), ((4, 6, 5), vec![2, 6, 6, 4])] {
        let lengths = Arc::new(lengths);
        let (b, t, h) = dims;
        let weights = Tensor::from_vec(pseudo_random(b * t * h, 5, 1.0), (b, t, h), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        for cell in CELLS {
            for reverse in [false, true] {
                let inputs = layer_inputs(cell, dims, 11, DType::F32);
                let (out, grads) =
                    run_with_grads(recurrent_layer, &inputs, cell, &lengths, reverse, &weights);
                let (ref_out, ref_grads) = run_with_grads(
                    recurrent_layer_reference,
                    &inputs,
                    cell,
                    &lengths,
                    reverse,
                    &weights,
                );
                assert!(max_diff(&out, &ref_out) < 1e-5, "{cell:?} reverse={reverse} outputs");
                for (which, (g, r)) in grads.iter().zip(&ref_grads).enumerate() {
                    let scale = 1.0 + r.iter().fold(0f64, |m, x| m.max(x.abs()));
                    let diff = max_diff(g, r);
                    assert!(diff < 1e-5 * scale, "{cell:?} reverse={reverse} grad {which}: {diff}");
                }
            }
        }
    }
}

#[test]
fn rows_are_the_same_alone_or_padded_and_zero_past_their_length() {
    let lengths = Arc::new(vec![5, 2, 6, 4]);
    let (b, t, h) = (4, 6, 4);
    for cell in CELLS {
        for reverse in [false, true] {
            let [xs, w, bias] = layer_inputs(cell, (b, t, h), 3, DType::F64);
            let batch_out = recurrent_layer(&xs, &w, &bias, cell, &lengths, reverse).unwrap();
            for (row, &len) in lengths.iter().enumerate() {
                let alone_xs = xs.narrow(0, row, 1).unwrap().narrow(1, 0, len).unwrap();
                let alone =
                    recurrent_layer(&alone_xs, &w, &bias, cell, &Arc::new(vec![len]), reverse);
                let in_batch = batch_out.narrow(0, row, 1).unwrap();
                let real = to_vec(&in_batch.narrow(1, 0, len).unwrap());
                assert!(max_diff(&real, &to_vec(&alone.unwrap())) < 1e-12, "{cell:?} row {row}");
                let padded = to_vec(&in_batch.narrow(1, len, t - len).unwrap());
                assert!(padded.iter().all(|&x| x == 0.0), "{cell:?} row {row} padding");
            }
        }
    }
}

#[test]
fn no_gradient_reaches_padded_inputs() {
    let lengths = Arc::new(vec![3, 5, 1]);
    for cell in CELLS {
        for reverse in [false, true] {
            let inputs = layer_inputs(cell, (3, 5, 4), 21, DType::F32);
            let ones = Tensor::ones((3, 5, 4), DType::F32, &Device::Cpu).unwrap();
            let (_, grads) =
                run_with_grads(recurrent_layer, &inputs, cell, &lengths, reverse, &ones);
            let gw = cell.gates() * 4;
            for (row, &len) in lengths.iter().enumerate() {
                let padded = &grads[0][(row * 5 + len) * gw..(row + 1) * 5 * gw];
                assert!(padded.iter().all(|&x| x == 0.0), "{cell:?} row {row}");
                let real = &grads[0][row * 5 * gw..(row * 5 + len) * gw];
                assert!(real.iter().any(|&x| x != 0.0), "{cell:?} row {row} has gradient");
            }
        }
    }
}

#[test]
fn reverse_starts_at_each_rows_last_real_token() {
    let lengths = Arc::new(vec![2, 5, 3]);
    let (b, t, h) = (3, 5, 3);
    for cell in CELLS {
        let [xs, w, bias] = layer_inputs(cell, (b, t, h), 17, DType::F64);
        let reversed = recurrent_layer(&xs, &w, &bias, cell, &lengths, true).unwrap();
        let gw = cell.gates() * h;
        let data = to_vec(&xs);
        for (row, &len) in lengths.iter().enumerate() {
            // The row's real tokens in reverse order, as a batch of one.
            let flipped: Vec<f64> = (0..len)
                .rev()
                .flat_map(|step| data[(row * t + step) * gw..(row * t + step + 1) * gw].to_vec())
                .collect();
            let flipped = Tensor::from_vec(flipped, (1, len, gw), &Device::Cpu).unwrap();
            let forward =
                recurrent_layer_reference(&flipped, &w, &bias, cell, &Arc::new(vec![len]), false);
            let forward = to_vec(&forward.unwrap());
            let got = to_vec(&reversed.narrow(0, row, 1).unwrap().narrow(1, 0, len).unwrap());
            for step in 0..len {
                let want = &forward[(len - 1 - step) * h..(len - step) * h];
                let diff = max_diff(&got[step * h..(step + 1) * h], want);
                assert!(diff < 1e-12, "{cell:?} row {row} step {step}: {diff}");
            }
        }
    }
}

#[test]
fn inference_matches_training_forward_without_a_graph() {
    let lengths = Arc::new(vec![4, 1, 3]);
    for cell in CELLS {
        let inputs = layer_inputs(cell, (3, 4, 6), 2, DType::F32);
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let train = recurrent_layer(&vars[0], &vars[1], &vars[2], cell, &lengths, true).unwrap();
        let infer = recurrent_layer_inference(&vars[0], &vars[1], &vars[2], cell, &lengths, true);
        let infer = infer.unwrap();
        assert!(train.track_op() && !infer.track_op());
        assert_eq!(to_vec(&train), to_vec(&infer), "{cell:?}");
    }
}

#[test]
fn bidirectional_equals_two_directions_concatenated() {
    let (b, t, h) = (3, 5, 4);
    let lengths = Arc::new(vec![5, 2, 4]);
    let weights =
        Tensor::from_vec(pseudo_random(b * t * 2 * h, 8, 1.0), (b, t, 2 * h), &Device::Cpu);
    let weights = weights.unwrap();
    for cell in CELLS {
        let gw = cell.gates() * h;
        let make = |len, seed, shape: &[usize]| {
            let t = Tensor::from_vec(pseudo_random(len, seed, 1.0), shape, &Device::Cpu);
            Var::from_tensor(&t.unwrap()).unwrap()
        };
        let xs = make(b * t * 2 * gw, 31, &[b, t, 2 * gw]);
        let w = make(2 * gw * h, 32, &[2, gw, h]);
        let bias = make(2 * gw, 33, &[2, gw]);
        let vars = [&xs, &w, &bias];
        let grads_of = |out: &Tensor| {
            let grads = weighted_sum(out, &weights).backward().unwrap();
            vars.map(|v| to_vec(grads.get(v).unwrap()))
        };

        let halves: Vec<Tensor> = (0..2)
            .map(|d| {
                let xs_d = xs.narrow(2, d * gw, gw).unwrap();
                let (w_d, b_d) = (w.get(d).unwrap(), bias.get(d).unwrap());
                recurrent_layer(&xs_d, &w_d, &b_d, cell, &lengths, d == 1).unwrap()
            })
            .collect();
        let expected = Tensor::cat(&halves, 2).unwrap();
        let expected_grads = grads_of(&expected);

        for parallel in [false, true] {
            let out = bidirectional_layer(&xs, &w, &bias, cell, &lengths, parallel).unwrap();
            assert!(max_diff(&to_vec(&out), &to_vec(&expected)) < 1e-12, "{cell:?} output");
            for (which, (g, e)) in grads_of(&out).iter().zip(&expected_grads).enumerate() {
                assert!(max_diff(g, e) < 1e-12, "{cell:?} parallel={parallel} grad {which}");
            }
            let infer = bidirectional_layer_inference(&xs, &w, &bias, cell, &lengths, parallel);
            assert_eq!(to_vec(&infer.unwrap()), to_vec(&out), "{cell:?} inference");
        }
    }
}

#[test]
fn bad_shapes_and_lengths_are_rejected() {
    let [xs, w, b] = layer_inputs(CellKind::Gru, (2, 3, 4), 1, DType::F32);
    let err = |lengths: Vec<usize>, cell| {
        recurrent_layer(&xs, &w, &b, cell, &Arc::new(lengths), false).unwrap_err().to_string()
    };
    assert!(err(vec![3, 0], CellKind::Gru).contains("row 1 has length 0"));
    assert!(err(vec![3, 4], CellKind::Gru).contains("row 1 has length 4"));
    assert!(err(vec![3], CellKind::Gru).contains("1 lengths given for a batch of 2"));
    assert!(err(vec![3, 3], CellKind::Lstm).contains("shapes do not fit"));
    let bi = bidirectional_layer(&xs, &w, &b, CellKind::Gru, &Arc::new(vec![3, 3]), false);
    assert!(bi.unwrap_err().to_string().contains("with 2 direction(s)"));
    let w64 = w.to_dtype(DType::F64).unwrap();
    let mixed = recurrent_layer(&xs, &w64, &b, CellKind::Gru, &Arc::new(vec![3, 3]), false);
    assert!(mixed.unwrap_err().to_string().contains("dtypes differ"));
}

/// Time this thread has run on a CPU, in ns (Linux; the machine is shared, so wall time
/// overstates what the kernels cost).
fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Milliseconds of CPU time per call of `f`: the best of five rounds of `runs` calls
/// each, after two warm-up calls.
pub(crate) fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    (0..5)
        .map(|_| {
            let start = thread_cpu_ns();
            (0..runs).for_each(|_| f());
            (thread_cpu_ns() - start) as f64 * 1e-6 / runs as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Prints CPU milliseconds per call at the student and teacher sizes. Run with
/// `RAYON_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:\
/// glibc.malloc.trim_threshold=4294967295 cargo test --release --lib report_kernel -- \
/// --ignored --nocapture`: the tunables keep glibc from unmapping and re-faulting the
/// large buffers on every call (the service binary uses mimalloc, which keeps them), and
/// one Rayon thread stops Candle's element-wise ops from spinning a second core.
#[test]
#[ignore = "timing report, not a test; see the doc comment for how to run it"]
fn report_kernel_timings() {
    let lengths = Arc::new(vec![32; 64]);
    for (cell, hidden, runs) in [(CellKind::Gru, 64, 50), (CellKind::Lstm, 256, 10)] {
        let inputs = layer_inputs(cell, (64, 32, hidden), 1, DType::F32);
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let weights = Tensor::ones((64, 32, hidden), DType::F32, &Device::Cpu).unwrap();
        let train = time_ms(runs, || {
            let out = recurrent_layer(&vars[0], &vars[1], &vars[2], cell, &lengths, false).unwrap();
            weighted_sum(&out, &weights).backward().unwrap();
        });
        let forward = time_ms(runs, || {
            recurrent_layer(&vars[0], &vars[1], &vars[2], cell, &lengths, false).unwrap();
        });
        let infer = time_ms(runs, || {
            recurrent_layer_inference(&vars[0], &vars[1], &vars[2], cell, &lengths, false).unwrap();
        });
        let one = Arc::new(vec![32]);
        let row: Vec<Tensor> = inputs.to_vec();
        let row_xs = row[0].narrow(0, 0, 1).unwrap().contiguous().unwrap();
        let infer_b1 = time_ms(runs * 10, || {
            recurrent_layer_inference(&row_xs, &row[1], &row[2], cell, &one, false).unwrap();
        });
        let out = recurrent_layer(&vars[0], &vars[1], &vars[2], cell, &lengths, false).unwrap();
        let loss = weighted_sum(&out, &weights);
        let backward = time_ms(runs, || {
            loss.backward().unwrap();
        });
        println!("{cell:?} {hidden}: backward alone {backward:.3} ms");
        println!(
            "{cell:?} {hidden}, B 64, T 32: fwd+bwd {train:.3} ms, fwd (saving) {forward:.3} ms, \
             inference {infer:.3} ms, inference B 1 {infer_b1:.4} ms"
        );
    }
    report_bidirectional_timings();
}

/// Wall time of a bidirectional LSTM 256 layer at batch 64, on one and on two threads
/// (CPU time would hide the gain).
fn report_bidirectional_timings() {
    let (cell, hidden, lengths) = (CellKind::Lstm, 256, Arc::new(vec![32; 64]));
    let gw = cell.gates() * hidden;
    let make = |len, shape: &[usize]| {
        let t = Tensor::from_vec(pseudo_random(len, 4, 0.5), shape, &Device::Cpu).unwrap();
        Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap()
    };
    let xs = make(64 * 32 * 2 * gw, &[64, 32, 2 * gw]);
    let (w, b) = (make(2 * gw * hidden, &[2, gw, hidden]), make(2 * gw, &[2, gw]));
    let weights = Tensor::ones((64, 32, 2 * hidden), DType::F32, &Device::Cpu).unwrap();
    for parallel in [false, true] {
        let start = std::time::Instant::now();
        for _ in 0..5 {
            let out = bidirectional_layer(&xs, &w, &b, cell, &lengths, parallel).unwrap();
            weighted_sum(&out, &weights).backward().unwrap();
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / 5.0;
        println!("bidirectional Lstm 256 fwd+bwd, parallel={parallel}: {ms:.1} ms wall");
    }
}

/// A variable of uniform values in `[-scale, scale]`.
fn random_var(shape: &[usize], seed: u64, scale: f64) -> Var {
    let len = shape.iter().product();
    let t = Tensor::from_vec(pseudo_random(len, seed, scale), shape, &Device::Cpu).unwrap();
    Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap()
}

/// One training step of a micro-benchmark-shaped classifier: embedding, `layers`
/// recurrent layers (bidirectional when `parallel` is `Some`), linear head on the last
/// step, cross-entropy, AdamW.
struct ModelStep {
    cell: CellKind,
    vars: Vec<(String, Var)>,
    layers: usize,
    parallel: Option<bool>,
    /// Whether the input projection's bias goes through [`add_bias`].
    fast_bias: bool,
}

impl ModelStep {
    fn new(
        cell: CellKind,
        (emb, hidden, layers): (usize, usize, usize),
        parallel: Option<bool>,
    ) -> Self {
        let dirs = if parallel.is_some() { 2 } else { 1 };
        let gw = cell.gates() * hidden;
        let mut vars = vec![("emb".to_string(), random_var(&[20_000, emb], 1, 0.1))];
        for l in 0..layers {
            let input = if l == 0 { emb } else { dirs * hidden };
            let w_hh_shape = if dirs == 2 { vec![2, gw, hidden] } else { vec![gw, hidden] };
            let b_shape = if dirs == 2 { vec![2, gw] } else { vec![gw] };
            vars.push((format!("w_ih{l}"), random_var(&[dirs * gw, input], 2, 0.05)));
            vars.push((format!("b_ih{l}"), random_var(&[dirs * gw], 3, 0.05)));
            vars.push((format!("w_hh{l}"), random_var(&w_hh_shape, 4, 0.05)));
            vars.push((format!("b_hh{l}"), random_var(&b_shape, 5, 0.05)));
        }
        vars.push(("fc_w".to_string(), random_var(&[3, dirs * hidden], 6, 0.1)));
        vars.push(("fc_b".to_string(), random_var(&[3], 7, 0.1)));
        Self { cell, vars, layers, parallel, fast_bias: false }
    }

    fn var(&self, k: usize) -> &Tensor {
        self.vars[k].1.as_tensor()
    }

    /// The loss; with `lookup` the embedding rows are a detached leaf (for
    /// [`crate::ml::optim::AdamW::step_with_rows`]).
    fn loss(
        &self,
        ids: &Tensor,
        labels: &Tensor,
        lengths: &Arc<Vec<usize>>,
        lookup: Option<&Var>,
    ) -> Tensor {
        let (b, t) = ids.dims2().unwrap();
        let mut x = match lookup {
            Some(rows) => rows.as_tensor().clone(),
            None => self.var(0).index_select(&ids.flatten_all().unwrap(), 0).unwrap(),
        };
        for l in 0..self.layers {
            let (w_ih, b_ih, w_hh, b_hh) = (
                self.var(1 + 4 * l),
                self.var(2 + 4 * l),
                self.var(3 + 4 * l),
                self.var(4 + 4 * l),
            );
            let proj = x.matmul(&w_ih.t().unwrap()).unwrap();
            let proj = if self.fast_bias {
                add_bias(&proj, b_ih).unwrap()
            } else {
                proj.broadcast_add(b_ih).unwrap()
            };
            let proj = proj.reshape((b, t, ())).unwrap();
            let out = match self.parallel {
                Some(p) => bidirectional_layer(&proj, w_hh, b_hh, self.cell, lengths, p),
                None => recurrent_layer(&proj, w_hh, b_hh, self.cell, lengths, false),
            };
            let out = out.unwrap();
            x = out.reshape((b * t, ())).unwrap();
        }
        let last = x.reshape((b, t, ())).unwrap().narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
        let n = self.vars.len();
        let logits = last.matmul(&self.var(n - 2).t().unwrap()).unwrap();
        let logits = logits.broadcast_add(self.var(n - 1)).unwrap();
        candle_nn::loss::cross_entropy(&logits, labels).unwrap()
    }
}

/// Prints CPU (and wall) milliseconds per training step of the micro-benchmark models
/// with these kernels (the lead's model code will differ in details). Run like
/// [`report_kernel_timings`].
#[test]
#[ignore = "timing report, not a test; see the doc comment for how to run it"]
fn report_model_step_timings() {
    let ids: Vec<u32> =
        pseudo_random(64 * 32, 9, 1.0).iter().map(|x| ((x + 1.0) * 9_999.0) as u32).collect();
    let ids = Tensor::from_vec(ids, (64, 32), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec((0..64u32).map(|i| i % 3).collect::<Vec<_>>(), 64, &Device::Cpu);
    let (labels, lengths) = (labels.unwrap(), Arc::new(vec![32; 64]));
    let models = [
        ("student GRU 64", CellKind::Gru, (64, 64, 1), None),
        ("student GRU 64, embedding rows", CellKind::Gru, (64, 64, 1), None),
        ("student GRU 64, embedding rows, add_bias", CellKind::Gru, (64, 64, 1), None),
        ("teacher BiLSTM 256 x2, 1 thread", CellKind::Lstm, (128, 256, 2), Some(false)),
        ("teacher BiLSTM 256 x2, 2 threads", CellKind::Lstm, (128, 256, 2), Some(true)),
    ];
    let only = std::env::var("REPORT_ONLY").unwrap_or_default();
    for (name, cell, sizes, parallel) in models {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut model = ModelStep::new(cell, sizes, parallel);
        model.fast_bias = name.contains("add_bias") || name.contains("teacher");
        let mut opt = crate::ml::optim::AdamW::new(model.vars.clone(), Default::default()).unwrap();
        let runs = if cell == CellKind::Gru { 30 } else { 3 };
        let mut step = || {
            if name.contains("rows") {
                let ids_flat = ids.flatten_all().unwrap();
                let x = model.var(0).index_select(&ids_flat, 0).unwrap().detach();
                let x = Var::from_tensor(&x).unwrap();
                let grads = model.loss(&ids, &labels, &lengths, Some(&x)).backward().unwrap();
                let ids_vec: Vec<u32> = ids_flat.to_vec1().unwrap();
                let rows = crate::ml::optim::RowGradient {
                    name: "emb",
                    ids: &ids_vec,
                    rows: grads.get(&x).unwrap(),
                };
                opt.step_with_rows(&grads, &[rows], 0.0).unwrap();
            } else {
                let grads = model.loss(&ids, &labels, &lengths, None).backward().unwrap();
                opt.step(&grads, 0.0).unwrap();
            }
        };
        let wall = std::time::Instant::now();
        let cpu = time_ms(runs, &mut step);
        let wall = wall.elapsed().as_secs_f64() * 1e3 / (5 * runs + 2) as f64;
        println!("{name}: {cpu:.1} ms CPU per step ({:.0} ex/s), {wall:.1} ms wall", 64e3 / cpu);
    }
}
