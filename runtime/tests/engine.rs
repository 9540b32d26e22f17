//! The engine on the real SmolLM2 model: cache on/off and batching leave greedy outputs unchanged, logprobs match
//! a full recomputation, constrained outputs validate, pre-emption loses nothing, cancellation leaks nothing.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use grammar::{Constraint, GrammarCache, Limits, TokenSpace, Vocabulary};
use kernels::{LoadOptions, LogitsFor, Model, SeqInput, WeightFormat};
use radixserve_tests::model_path;
use runtime::{
    EngineHandle, ErrorCode, Event, FinishReason, MaxTokens, ModelExecutor, Output, Request, RequestStream,
    SamplingParams, SchedulerConfig,
};
use tokenizers::Tokenizer;

/// Tests take turns: libtorch already uses every core, and each engine holds a copy of the weights.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

struct Fixture {
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let g = kernels::gguf::GgufFile::open(model_path()).unwrap();
        let (tok, special) = kernels::tokenizer::from_gguf(&g).unwrap();
        Fixture { tokenizer: Arc::new(tok), eos: special.eos }
    })
}

/// The model with the quantized default weights, or with f32 ones: the tests whose outputs must be identical
/// across cache, batch and pre-emption use f32, the numerics reference, since int8 activation rounding (what the
/// quantized decode kernels do, as llama.cpp) amplifies f32 summation-order differences between paths chaotically;
/// they test the scheduler and the cache, not the kernels.
fn load(weights: WeightFormat) -> Model {
    Model::load(&model_path(), LoadOptions { weights, ..LoadOptions::default() }, &mut |_, _| {}).unwrap()
}

fn engine(slots: usize, cfg: SchedulerConfig) -> EngineHandle {
    engine_with(WeightFormat::Quantized, slots, cfg)
}

fn engine_with(weights: WeightFormat, slots: usize, cfg: SchedulerConfig) -> EngineHandle {
    let f = fixture();
    let exec = ModelExecutor::new(load(weights).net, slots).unwrap();
    runtime::start(exec, cfg, f.tokenizer.clone(), f.eos.clone()).unwrap()
}

fn encode(text: &str) -> Vec<u32> {
    fixture().tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    let mut r = Request::new(prompt);
    r.sampling = SamplingParams::greedy();
    r.stop.max_tokens = MaxTokens::Given(max_tokens);
    r
}

/// Validates and queues `r`.
fn submit(e: &EngineHandle, r: Request) -> RequestStream {
    e.submit(e.validate(r).unwrap()).unwrap()
}

fn run_all(e: &EngineHandle, reqs: Vec<Request>) -> Vec<Output> {
    let streams: Vec<_> = reqs.into_iter().map(|r| submit(e, r)).collect();
    streams.into_iter().map(|s| s.collect_blocking()).collect()
}

const SYSTEM: &str = "<|im_start|>system\nYou are a helpful assistant who answers questions about geography, \
history and science in short, precise sentences. Always name your sources when you can, and say so when you \
are not sure.<|im_end|>\n";

/// Prompts sharing prefixes in every way: identical, one a prefix of another, diverging mid-edge.
fn shared_prompts() -> Vec<Vec<u32>> {
    let q = |s: &str| encode(&format!("{SYSTEM}<|im_start|>user\n{s}<|im_end|>\n<|im_start|>assistant\n"));
    let base = q("What is the capital of France?");
    let mut prefix_of = base.clone();
    prefix_of.truncate(base.len() - 5);
    let mut v = vec![
        base.clone(),
        base.clone(),
        prefix_of,
        q("What is the capital of Spain?"),
        q("What is the capital of France? Answer in one word."),
        q("Who wrote Hamlet?"),
        encode("The quick brown fox"),
        encode("The quick brown fox jumps over the lazy dog because"),
    ];
    for s in ["Why is the sky blue?", "Name three rivers in Africa.", "What is 12 times 12?", "Who was Ada Lovelace?"] {
        v.push(q(s));
    }
    for s in ["Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,", "Paris is"] {
        v.push(encode(s));
    }
    assert_eq!(v.len(), 16);
    v
}

#[test]
fn greedy_outputs_do_not_depend_on_cache_or_batch() {
    let _g = serial();
    let prompts = shared_prompts();
    let max = 24;
    // Reference: cache off, one request at a time.
    let off = engine_with(WeightFormat::F32, 4096, SchedulerConfig { enable_cache: false, ..Default::default() });
    let reference: Vec<Output> =
        prompts.iter().map(|p| run_all(&off, vec![greedy(p.clone(), max)]).remove(0)).collect();
    drop(off);
    for r in &reference {
        assert!(r.finished.is_some() && !r.tokens.is_empty());
        assert_eq!(r.finished.as_ref().unwrap().cached_tokens, 0);
    }
    // Cache on, one at a time: later prompts reuse earlier ones.
    let on = engine_with(WeightFormat::F32, 4096, SchedulerConfig::default());
    let mut cached = Vec::new();
    for (p, r) in prompts.iter().zip(&reference) {
        let out = run_all(&on, vec![greedy(p.clone(), max)]).remove(0);
        assert_eq!(out.ids(), r.ids(), "cache on, alone: prompt {:?}", fixture().tokenizer.decode(p, false));
        assert_eq!(out.text, r.text);
        cached.push(out.finished.unwrap().cached_tokens);
    }
    assert_eq!(cached[1], prompts[1].len() - 1, "an identical prompt is cached but for its last token");
    assert_eq!(cached[2], prompts[2].len() - 1, "a prefix of a cached prompt");
    assert!(cached[3] > 40 && cached[3] < prompts[3].len() - 3, "diverges mid-edge: {cached:?}");
    let stats = on.stats().unwrap();
    assert_eq!(stats.slots_in_use_by_requests, 0);
    // Cache on, all 16 at once (a batch of 16, prefixes computed once and shared).
    assert!(on.flush_cache());
    let batched = run_all(&on, prompts.iter().map(|p| greedy(p.clone(), max)).collect());
    for (i, (b, r)) in batched.iter().zip(&reference).enumerate() {
        assert_eq!(b.ids(), r.ids(), "batch of 16, prompt {i}");
    }
    let hits: usize = batched.iter().map(|b| b.finished.as_ref().unwrap().cached_tokens).sum();
    assert!(hits > 300, "the shared system prompt is computed once in the batch: {hits} cached tokens");
    assert_eq!(on.stats().unwrap().slots_in_use_by_requests, 0);
}

#[test]
fn logprobs_match_a_full_recomputation() {
    let _g = serial();
    let e = engine_with(WeightFormat::F32, 2048, SchedulerConfig::default());
    let prompt = encode("<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n");
    let mut req = greedy(prompt.clone(), 12);
    req.logprobs = Some(5);
    req.sampling.temperature = 0.7;
    req.sampling.seed = Some(3);
    let out = run_all(&e, vec![req]).remove(0);
    drop(e);
    let model = load(WeightFormat::F32);
    let mut kv = model.net.new_kv_pool(1024).unwrap();
    let all: Vec<u32> = prompt.iter().copied().chain(out.ids()).collect();
    let slots: Vec<u32> = (0..all.len() as u32).collect();
    let logits = model
        .net
        .forward(&mut kv, &[SeqInput { context_slots: &[], tokens: &all, new_slots: &slots, logits: LogitsFor::All }])
        .unwrap();
    let lsm = logits.tensor.log_softmax(-1, kernels::Kind::Float);
    for (i, t) in out.tokens.iter().enumerate() {
        let row = lsm.get((prompt.len() - 1 + i) as i64);
        let want = row.double_value(&[t.id as i64]);
        assert!((t.logprob.unwrap() as f64 - want).abs() < 1e-4, "token {i}: {} vs {want}", t.logprob.unwrap());
        assert_eq!(t.top_logprobs.len(), 5);
        for &(id, lp) in &t.top_logprobs {
            assert!((lp as f64 - row.double_value(&[id as i64])).abs() < 1e-4);
        }
        let (vals, _) = row.topk(5, -1, true, true);
        assert!((t.top_logprobs[0].1 as f64 - vals.double_value(&[0])).abs() < 1e-4, "best alternative first");
        assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[test]
fn json_schema_outputs_always_validate() {
    let _g = serial();
    let f = fixture();
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&f.tokenizer, &f.eos).unwrap());
    let cache = GrammarCache::new(space, Limits::default(), 16);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "country": {"type": "string", "enum": ["France", "Spain", "Italy", "Other"]},
            "capital": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
        },
        "required": ["name", "country", "capital"],
        "additionalProperties": false
    });
    let grammar = cache.get_or_compile(&Constraint::JsonSchema(schema.to_string())).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let e = engine(4096, SchedulerConfig::default());
    let prompt = encode("<|im_start|>user\nDescribe a city as JSON.<|im_end|>\n<|im_start|>assistant\n");
    let reqs = (0..8u64)
        .map(|seed| {
            let mut r = Request::new(prompt.clone());
            r.sampling = SamplingParams { temperature: 1.0, seed: Some(seed), ..Default::default() };
            r.stop.max_tokens = MaxTokens::Given(200);
            r.grammar = Some(grammar.clone());
            r
        })
        .collect();
    let mut distinct = std::collections::HashSet::new();
    for out in run_all(&e, reqs) {
        let fin = out.finished.clone().unwrap();
        assert_eq!(fin.reason, FinishReason::Stop, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
        assert!(validator.is_valid(&v), "{v}");
        distinct.insert(out.text.clone());
    }
    assert!(distinct.len() > 1, "temperature 1.0 with different seeds gives different objects");
    let jf = e.stats().unwrap().scheduler.jump_forward_tokens;
    assert!(jf > 0, "jump-forward appends the forced keys");
}

#[test]
fn preemption_under_a_small_pool_loses_nothing() {
    let _g = serial();
    let topics = ["rivers", "volcanoes", "bread", "chess", "comets", "violins", "glaciers", "bees", "tides", "ink"];
    let prompts: Vec<Vec<u32>> = topics
        .iter()
        .map(|t| encode(&format!("Here are some surprising facts about {t}, explained simply:")))
        .collect();
    let reqs = || prompts.iter().map(|p| greedy(p.clone(), 40)).collect::<Vec<_>>();
    let big = engine_with(WeightFormat::F32, 8192, SchedulerConfig::default());
    let want: Vec<Vec<u32>> = run_all(&big, reqs()).iter().map(|o| o.ids()).collect();
    drop(big);
    // Room for about three requests at once: admission and decode growth must pre-empt.
    let small = engine_with(WeightFormat::F32, 160, SchedulerConfig { step_tokens: 128, ..Default::default() });
    let got = run_all(&small, reqs());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&g.ids(), w, "request {i} under pre-emption");
    }
    let stats = small.stats().unwrap();
    assert!(stats.scheduler.retractions > 0, "the pool is small enough to force pre-emption: {stats:?}");
    assert_eq!(stats.slots_in_use_by_requests, 0);
}

#[test]
fn seeded_sampling_does_not_depend_on_the_batch() {
    let _g = serial();
    let e = engine_with(WeightFormat::F32, 4096, SchedulerConfig::default());
    let mk = |p: &str, seed| {
        let mut r = Request::new(encode(p));
        r.sampling = SamplingParams { temperature: 0.9, top_p: 0.95, seed: Some(seed), ..Default::default() };
        r.stop.max_tokens = MaxTokens::Given(20);
        r
    };
    let alone = run_all(&e, vec![mk("Tell me a story about", 42)]).remove(0);
    let mut batch = vec![mk("Tell me a story about", 42)];
    batch.extend((0..7).map(|i| mk("A poem on the sea:", i)));
    let together = run_all(&e, batch).remove(0);
    assert_eq!(alone.ids(), together.ids());
    let other_seed = run_all(&e, vec![mk("Tell me a story about", 43)]).remove(0);
    assert_ne!(alone.ids(), other_seed.ids(), "a different seed draws differently");
}

#[test]
fn stops_lengths_and_detokenization() {
    let _g = serial();
    let e = engine(4096, SchedulerConfig::default());
    let tok = &fixture().tokenizer;
    let prompt = encode("1, 2, 3, 4, 5,");
    // Length.
    let out = run_all(&e, vec![greedy(prompt.clone(), 10)]).remove(0);
    let fin = out.finished.clone().unwrap();
    assert_eq!(
        (fin.reason.clone(), fin.completion_tokens, fin.prompt_tokens),
        (FinishReason::Length, 10, prompt.len())
    );
    assert_eq!(out.text, tok.decode(&out.ids(), true).unwrap(), "streamed text equals a full decode");
    assert!(out.text.starts_with(" 6, 7"), "{:?}", out.text);
    // A stop string in the middle of the output: everything before it, nothing of it.
    let mut r = greedy(prompt.clone(), 30);
    r.stop.stop = vec!["8,".into()];
    let s = run_all(&e, vec![r]).remove(0);
    assert_eq!(s.finished.unwrap().reason, FinishReason::StopString("8,".into()));
    assert_eq!(s.text, " 6, 7, ");
    // A stop token id.
    let seven = *encode(" 7").last().unwrap();
    let mut r = greedy(prompt.clone(), 30);
    r.stop.stop_token_ids = vec![seven];
    let s = run_all(&e, vec![r]).remove(0);
    assert_eq!(s.finished.clone().unwrap().reason, FinishReason::StopToken(seven));
    assert_eq!(s.ids().last(), Some(&seven));
    // EOS ends a chat answer; min_tokens holds it off; ignore_eos runs to max_tokens.
    let chat = encode("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n");
    let natural = run_all(&e, vec![greedy(chat.clone(), 200)]).remove(0);
    assert_eq!(natural.finished.clone().unwrap().reason, FinishReason::Stop);
    let n = natural.tokens.len();
    let mut r = greedy(chat.clone(), 200);
    r.stop.min_tokens = n + 5;
    let longer = run_all(&e, vec![r]).remove(0);
    assert!(longer.tokens.len() >= n + 5, "min_tokens {} got {}", n + 5, longer.tokens.len());
    let mut r = greedy(chat, 40);
    r.stop.ignore_eos = true;
    assert_eq!(run_all(&e, vec![r]).remove(0).tokens.len(), 40);
    // Multi-byte characters stream whole.
    let mut r = greedy(encode("Japanese for 'thank you' is"), 16);
    r.sampling.temperature = 0.0;
    let o = run_all(&e, vec![r]).remove(0);
    assert_eq!(o.text, tok.decode(&o.ids(), true).unwrap());
}

#[test]
fn parallel_samples_compute_the_prompt_once() {
    let _g = serial();
    let e = engine(4096, SchedulerConfig::default());
    let prompt = encode(&format!("{SYSTEM}<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n"));
    let before = e.stats().unwrap().scheduler.forward_tokens;
    let reqs = (0..4u64)
        .map(|i| {
            let mut r = Request::new(prompt.clone());
            r.sampling.seed = Some(i);
            r.stop.max_tokens = MaxTokens::Given(8);
            r.stop.ignore_eos = true;
            r
        })
        .collect();
    let outs = run_all(&e, reqs);
    let computed = e.stats().unwrap().scheduler.forward_tokens - before;
    // The prompt once, then each sample's last prompt token and its 8 tokens (7 forwarded + jump-free).
    assert!(
        computed as usize <= prompt.len() + 4 * 9,
        "computed {computed} tokens for a {}-token prompt",
        prompt.len()
    );
    let cached: Vec<usize> = outs.iter().map(|o| o.finished.as_ref().unwrap().cached_tokens).collect();
    assert_eq!(cached.iter().filter(|&&c| c == prompt.len() - 1).count(), 3, "{cached:?}");
}

#[test]
fn a_thousand_cancelled_requests_leak_no_slots() {
    let _g = serial();
    let e = engine(2048, SchedulerConfig { max_queued: 2000, ..Default::default() });
    for i in 0..1000u32 {
        let mut r = greedy(encode(&format!("Request number {i} asks for a long answer:")), 64);
        r.stop.ignore_eos = true;
        let mut s = submit(&e, r);
        if i % 50 == 0 {
            // Some are cancelled mid-generation, after their first tokens.
            assert!(matches!(s.blocking_recv(), Some(Event::Delta { .. })));
        }
        drop(s);
    }
    // A last request runs to completion behind them.
    let out = run_all(&e, vec![greedy(encode("Finally,"), 4)]).remove(0);
    assert_eq!(out.tokens.len(), 4);
    let stats = e.stats().unwrap();
    assert_eq!(stats.slots_in_use_by_requests, 0, "{stats:?}");
    let m = e.metrics().render();
    assert!(m.contains("radixserve_requests_total{finish_reason=\"abort\"}"), "{m}");
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let _g = serial();
    let e = engine(512, SchedulerConfig { max_queued: 2, ..Default::default() });
    let err = |r: Request| e.validate(r).unwrap_err();
    let empty = err(Request::new(vec![]));
    assert_eq!((empty.param.as_str(), empty.code), ("prompt", ErrorCode::InvalidValue));
    let long = err(Request::new(vec![1; 600]));
    assert_eq!((long.param.as_str(), long.code), ("prompt", ErrorCode::ContextLengthExceeded));
    assert!(long.message.contains("600 tokens"), "{long}");
    // max_tokens the context cannot hold is refused when the client gave it, clamped when it is a default.
    let mut r = Request::new(vec![1; 500]);
    r.stop.max_tokens = MaxTokens::Given(13);
    let over = err(r.clone());
    assert_eq!((over.param.as_str(), over.code), ("max_tokens", ErrorCode::ContextLengthExceeded));
    assert!(over.message.contains("at most 12"), "{over}");
    r.stop.max_tokens = MaxTokens::Given(12);
    assert!(e.validate(r.clone()).is_ok());
    r.stop.max_tokens = MaxTokens::UpTo(1 << 40);
    let out = e.submit(e.validate(r).unwrap()).unwrap().collect_blocking();
    assert!(out.tokens.len() <= 12, "clamped to the context");
    let mut r = Request::new(vec![1, 2]);
    r.sampling.temperature = -1.0;
    assert_eq!(err(r).param, "temperature");
    let mut r = Request::new(vec![1, 2]);
    r.logprobs = Some(21);
    assert_eq!(err(r).param, "top_logprobs");
}
