//! Choosing the next token from one row of logits, on the host.
//!
//! Order, as in vLLM and SGLang: penalties, `logit_bias`, bans (EOS before `min_tokens`) and the grammar mask,
//! then greedy or temperature, top-k, top-p, min-p and a draw from the request's own generator (so a seeded
//! request is reproducible whatever else is in the batch). Logprobs are taken from the model's raw distribution
//! before any of this, like OpenAI's.

use std::collections::HashMap;

use grammar::TokenBitset;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::params::SamplingParams;

/// Per-request sampling state: the generator and the token counts penalties need.
#[derive(Debug, Clone)]
pub struct SamplerState {
    rng: StdRng,
    /// Occurrences of each token in the output.
    output_counts: HashMap<u32, u32>,
    /// Tokens of the prompt (for the repetition penalty).
    prompt_tokens: Vec<u32>,
}

impl SamplerState {
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let mut prompt_tokens = Vec::new();
        if params.repetition_penalty != 1.0 {
            prompt_tokens = prompt.to_vec();
            prompt_tokens.sort_unstable();
            prompt_tokens.dedup();
        }
        Self { rng, output_counts: HashMap::new(), prompt_tokens }
    }

    /// Records a generated token.
    pub fn observe(&mut self, params: &SamplingParams, token: u32) {
        if params.tracks_counts() {
            *self.output_counts.entry(token).or_insert(0) += 1;
        }
    }
}

/// The chosen token's log-probability and the `k` most likely tokens with theirs, from raw logits.
pub fn logprobs(row: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &x) in row.iter().enumerate() {
            if top.len() < k || x > top[top.len() - 1].1 {
                let pos = top.partition_point(|&(_, v)| v >= x);
                top.insert(pos, (i as u32, x));
                top.truncate(k);
            }
        }
    }
    let chosen_lp = row.get(chosen as usize).map_or(f32::NEG_INFINITY, |&x| lp(x));
    (chosen_lp, top.into_iter().map(|(i, x)| (i, lp(x))).collect())
}

/// Applies penalties, bias, bans and the mask to `row` in place, then picks a token. `None` when nothing is
/// allowed (every logit is -inf after masking).
pub fn sample(
    params: &SamplingParams,
    state: &mut SamplerState,
    row: &mut [f32],
    allowed: Option<&TokenBitset>,
    banned: &[u32],
) -> Option<u32> {
    apply_penalties(params, state, row);
    for &(t, b) in &params.logit_bias {
        if let Some(x) = row.get_mut(t as usize) {
            *x += b;
        }
    }
    for &t in banned {
        if let Some(x) = row.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    if let Some(mask) = allowed {
        apply_mask(row, mask);
    }
    if params.is_greedy() {
        return argmax(row);
    }
    let inv_t = 1.0 / params.temperature;
    let mut cand: Vec<(u32, f32)> =
        row.iter().enumerate().filter(|(_, x)| x.is_finite()).map(|(i, &x)| (i as u32, x * inv_t)).collect();
    if cand.is_empty() {
        return None;
    }
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.select_nth_unstable_by(params.top_k - 1, |a, b| b.1.total_cmp(&a.1));
        cand.truncate(params.top_k);
    }
    // Softmax over the candidates.
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f64;
    for c in cand.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1 as f64;
    }
    if params.top_p < 1.0 {
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let target = params.top_p as f64 * total;
        let mut acc = 0.0f64;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 as f64;
            if acc >= target {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        total = cand.iter().map(|c| c.1 as f64).sum();
    }
    if params.min_p > 0.0 {
        // The largest candidate has weight 1 (exp(0)).
        cand.retain(|c| c.1 >= params.min_p);
        total = cand.iter().map(|c| c.1 as f64).sum();
    }
    let _ = total;
    Some(race(state.rng.random(), &cand))
}

/// Draws from weights `w` (unnormalized) by an exponential race: the winner is `argmax w_i / E_i` with
/// `E_i = -ln U_i` and `U_i` a hash of (`key`, token id), which picks token i with probability `w_i / sum(w)`.
/// Unlike walking the cumulative distribution, tiny changes in the weights (a different batch changes the last
/// bits of the logits) only change the winner when the top two ratios are within that change of each other, so a
/// seeded request draws the same tokens whatever runs beside it. A cheap bound skips the logarithm for tokens that
/// cannot win (`U_i <= 1 - w_i/best` implies `w_i/E_i <= best`, since `e^-a >= 1 - a`).
fn race(key: u64, cand: &[(u32, f32)]) -> u32 {
    let uniform = |id: u32| -> f64 {
        let h = splitmix64(key ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    };
    let (mut best_id, mut best) = (cand[0].0, f64::NEG_INFINITY);
    for &(id, w) in cand {
        let w = w as f64;
        if w <= 0.0 {
            continue;
        }
        let u = uniform(id);
        if best > 0.0 && u <= 1.0 - w / best {
            continue;
        }
        let r = w / -u.ln();
        if r > best {
            best = r;
            best_id = id;
        }
    }
    best_id
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn apply_penalties(params: &SamplingParams, state: &SamplerState, row: &mut [f32]) {
    if params.repetition_penalty != 1.0 {
        let p = params.repetition_penalty;
        let mut penalize = |t: u32| {
            if let Some(x) = row.get_mut(t as usize) {
                *x = if *x > 0.0 { *x / p } else { *x * p };
            }
        };
        for &t in &state.prompt_tokens {
            penalize(t);
        }
        for &t in state.output_counts.keys() {
            if state.prompt_tokens.binary_search(&t).is_err() {
                penalize(t);
            }
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        for (&t, &n) in &state.output_counts {
            if let Some(x) = row.get_mut(t as usize) {
                *x -= params.frequency_penalty * n as f32 + params.presence_penalty;
            }
        }
    }
}

/// Sets every token outside `mask` (and beyond it: logits may be padded past the vocabulary) to -inf.
fn apply_mask(row: &mut [f32], mask: &TokenBitset) {
    let words = mask.words();
    for (w, chunk) in row.chunks_mut(64).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u64::MAX {
            continue;
        }
        for (j, x) in chunk.iter_mut().enumerate() {
            if bits >> j & 1 == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// The first index of the largest finite value.
pub fn argmax(row: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for (i, &x) in row.iter().enumerate() {
        if x.is_finite() && best.is_none_or(|(_, b)| x > b) {
            best = Some((i as u32, x));
        }
    }
    best.map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams { seed: Some(7), ..SamplingParams::default() };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let p = params(|p| p.temperature = 0.0);
        let mut s = SamplerState::new(&p, &[]);
        assert_eq!(sample(&p, &mut s, &mut [0.0, 3.0, 3.0, 1.0], None, &[]), Some(1));
    }

    #[test]
    fn mask_bans_and_bias_apply_before_choosing() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(3, 5.0)];
        });
        let mut s = SamplerState::new(&p, &[]);
        let mut mask = TokenBitset::new(4);
        mask.set(0);
        mask.set(2);
        assert_eq!(sample(&p, &mut s, &mut [0.0, 9.0, 1.0, 0.0], Some(&mask), &[]), Some(2));
        assert_eq!(sample(&p, &mut s, &mut [0.0, 9.0, 1.0, 0.0], None, &[1]), Some(3), "bias lifts token 3");
        let empty = TokenBitset::new(4);
        assert_eq!(sample(&p, &mut s, &mut [0.0; 4], Some(&empty), &[]), None);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for p in [params(|p| p.top_k = 1), params(|p| p.top_p = 1e-6), params(|p| p.min_p = 0.999)] {
            let mut s = SamplerState::new(&p, &[]);
            for _ in 0..50 {
                assert_eq!(sample(&p, &mut s, &mut [1.0, 2.0, 1.9, 0.0], None, &[]), Some(1), "{p:?}");
            }
        }
    }

    #[test]
    fn seeded_draws_repeat_and_follow_the_distribution() {
        let p = params(|_| {});
        let draw = |n: usize| {
            let mut s = SamplerState::new(&p, &[]);
            (0..n)
                .map(|_| sample(&p, &mut s, &mut [0.0, (3.0f32).ln(), f32::NEG_INFINITY], None, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(4000);
        assert_eq!(a, draw(4000), "same seed, same tokens");
        assert!(!a.contains(&2), "a -inf logit is never drawn");
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "P(token 1) = 0.75, drew {ones}");
    }

    #[test]
    fn the_race_survives_tiny_logit_changes() {
        // A flat distribution over many tokens, drawn with the same keys before and after a 1e-5 perturbation:
        // a cumulative walk flips often; the race almost never does.
        let p = params(|p| p.seed = Some(1));
        let base: Vec<f32> = (0..20_000).map(|i| ((i * 7919 % 1000) as f32) / 1000.0).collect();
        let noisy: Vec<f32> = base.iter().enumerate().map(|(i, x)| x + if i < 10_000 { 1e-5 } else { -1e-5 }).collect();
        let (mut a, mut b) = (SamplerState::new(&p, &[]), SamplerState::new(&p, &[]));
        let flips = (0..500)
            .filter(|_| {
                sample(&p, &mut a, &mut base.clone(), None, &[]) != sample(&p, &mut b, &mut noisy.clone(), None, &[])
            })
            .count();
        assert!(flips <= 2, "{flips} of 500 draws changed");
    }

    #[test]
    fn penalties_follow_openai_and_ctrl() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 1.0;
            p.presence_penalty = 0.5;
        });
        let mut s = SamplerState::new(&p, &[]);
        s.observe(&p, 0);
        s.observe(&p, 0);
        let mut row = [3.0, 1.0];
        sample(&p, &mut s, &mut row, None, &[]);
        assert_eq!(row, [3.0 - 2.0 - 0.5, 1.0]);
        let p = params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        });
        let mut s = SamplerState::new(&p, &[0, 1]);
        let mut row = [4.0, -1.0, 3.0];
        assert_eq!(sample(&p, &mut s, &mut row, None, &[]), Some(2));
        assert_eq!(row, [2.0, -2.0, 3.0]);
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let row = [1.0f32, 2.0, 3.0, 0.5];
        let (lp, top) = logprobs(&row, 0, 2);
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((lp as f64 - (1.0 - z.ln())).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 1]);
        assert!((top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
    }
}
