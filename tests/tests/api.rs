//! End-to-end tests of the OpenAI-compatible API over loopback HTTP, against the real SmolLM2 model.

mod common;

// These tests pin the API's behaviour down to the exact text (streamed = whole, same seed = same object, n = 2), so
// they run on the f32-weight server, whose outputs do not depend on the batch or the cache; the quantized default
// serves the SDK, LangChain, instructor, Responses and embeddings tests.
use common::{exact_server as server, time_tool, user, validates, weather_tool, KEY};
use serde_json::{json, Value};

fn usage_ok(v: &Value) {
    let u = &v["usage"];
    let (p, c, t) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0 && t == p + c, "{u}");
    assert!(u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() <= p);
}

#[test]
fn chat_completion_shape_usage_and_content_parts() {
    let s = server();
    let v = s.chat(json!({"messages": user("What is the capital of France?"), "max_tokens": 30, "temperature": 0}));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], s.model.as_str());
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(c["finish_reason"], "stop");
    usage_ok(&v);
    // Content as a list of text parts renders the same prompt.
    let parts = json!([{"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}]);
    let w = s.chat(json!({"messages": parts, "max_tokens": 30, "temperature": 0}));
    assert_eq!(w["choices"][0]["message"]["content"], c["message"]["content"]);
    assert_eq!(w["usage"]["prompt_tokens"], v["usage"]["prompt_tokens"]);
    assert!(w["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "the repeat hits the cache");
    // A system message, then an earlier exchange.
    let msgs = json!([
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "Capital of Spain?"}
    ]);
    let v = s.chat(json!({"messages": msgs, "max_completion_tokens": 10, "temperature": 0}));
    usage_ok(&v);
}

#[test]
fn lengths_stops_n_and_seeds() {
    let s = server();
    let v = s.chat(json!({"messages": user("Count from 1 to 50."), "max_tokens": 7, "temperature": 0}));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let full = s.chat(
        json!({"messages": user("Count from 1 to 20, separated by commas."), "max_tokens": 60, "temperature": 0}),
    );
    let text = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(text.contains('5'), "{text}");
    let stopped = s.chat(json!({"messages": user("Count from 1 to 20, separated by commas."), "max_tokens": 60, "temperature": 0, "stop": ["5"]}));
    let st = stopped["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(st, &text[..text.find('5').unwrap()], "the text up to the stop string, without it");
    // n samples with a seed: n choices, reproducible.
    let body = json!({"messages": user("Write a word."), "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 11});
    let a = s.chat(body.clone());
    let b = s.chat(body);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(a["choices"][i]["index"], i);
        assert_eq!(a["choices"][i]["message"], b["choices"][i]["message"], "same seed, same samples");
    }
    let texts: std::collections::HashSet<String> =
        (0..3).map(|i| a["choices"][i]["message"]["content"].to_string()).collect();
    assert!(texts.len() > 1, "samples of n differ: {a}");
    usage_ok(&a);
}

#[test]
fn logprobs_are_reported_per_token() {
    let s = server();
    let v = s.chat(json!({"messages": user("Name a fruit."), "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3}));
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let text: String = content.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], t["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
}

fn chunks(lines: &[String]) -> Vec<Value> {
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"), "{lines:?}");
    lines[..lines.len() - 1].iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn streaming_matches_the_whole_answer() {
    let s = server();
    let body = json!({"model": s.model, "messages": user("Tell me about the moon."), "max_tokens": 40, "temperature": 0.8, "seed": 5, "n": 2});
    let whole = s.chat(body.clone());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let cs = chunks(&s.stream("/v1/chat/completions", &sb));
    let mut texts = vec![String::new(); 2];
    let mut finishes = vec![Vec::new(); 2];
    let mut first_delta = vec![None; 2];
    for c in &cs[..cs.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["usage"].is_null());
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            first_delta[i].get_or_insert_with(|| ch["delta"].clone());
            if let Some(t) = ch["delta"]["content"].as_str() {
                texts[i].push_str(t);
            }
            if !ch["finish_reason"].is_null() {
                finishes[i].push(ch["finish_reason"].clone());
            }
        }
    }
    for i in 0..2 {
        assert_eq!(first_delta[i].as_ref().unwrap()["role"], "assistant", "the first delta carries the role");
        assert_eq!(finishes[i].len(), 1, "exactly one finish_reason per choice");
        assert_eq!(finishes[i][0], whole["choices"][i]["finish_reason"]);
        assert_eq!(texts[i], whole["choices"][i]["message"]["content"].as_str().unwrap(), "choice {i}");
    }
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(last["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"]);
}

#[test]
fn response_formats_always_parse_and_validate() {
    let s = server();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer"},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3}
        },
        "required": ["name", "age", "hobbies"],
        "additionalProperties": false
    });
    for seed in 0..4 {
        let v = s.chat(json!({
            "messages": user("Describe a person."), "max_tokens": 150, "temperature": 1.0, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}}
        }));
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(validates(&schema, &doc), "{doc}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        // Streamed: the concatenated deltas validate too.
        let lines = s.stream("/v1/chat/completions", &json!({
            "model": s.model, "messages": user("Describe a person."), "max_tokens": 150, "temperature": 1.0, "seed": seed,
            "stream": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
        }));
        let streamed: String = chunks(&lines)
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
            .collect();
        assert_eq!(streamed, text, "same seed, same object");
    }
    let v = s.chat(json!({"messages": user("Give me some JSON about cats."), "max_tokens": 120, "response_format": {"type": "json_object"}, "seed": 1}));
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object(), "{text}");
    }
    // The SGLang/vLLM extras: regex and json_schema fields.
    let v = s.chat(json!({"messages": user("Pick a color."), "max_tokens": 10, "regex": "(red|green|blue)"}));
    assert!(["red", "green", "blue"].contains(&v["choices"][0]["message"]["content"].as_str().unwrap()));
}

#[test]
fn tool_calls_required_named_auto_and_streamed() {
    let s = server();
    let tools = json!([weather_tool(), time_tool()]);
    let params = weather_tool()["function"]["parameters"].clone();
    for choice in [json!("required"), json!({"type": "function", "function": {"name": "get_weather"}})] {
        let v = s.chat(json!({"messages": user("What's the weather in Paris?"), "tools": tools, "tool_choice": choice, "max_tokens": 300, "temperature": 0.7, "seed": 3}));
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert!(!calls.is_empty());
        for call in calls {
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            assert_eq!(call["type"], "function");
            let name = call["function"]["name"].as_str().unwrap();
            let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            if choice.is_object() {
                assert_eq!(name, "get_weather");
            }
            let p = if name == "get_weather" { params.clone() } else { time_tool()["function"]["parameters"].clone() };
            assert!(validates(&p, &args), "{args}");
        }
    }
    // Parallel calls off: exactly one call.
    let v = s.chat(json!({"messages": user("Weather in Oslo and time in Tokyo?"), "tools": tools, "tool_choice": "required", "parallel_tool_calls": false, "max_tokens": 120}));
    assert_eq!(v["choices"][0]["message"]["tool_calls"].as_array().unwrap().len(), 1);
    // none: text only.
    let v = s.chat(json!({"messages": user("Weather in Paris?"), "tools": tools, "tool_choice": "none", "max_tokens": 20, "temperature": 0}));
    assert!(v["choices"][0]["message"]["tool_calls"].is_null());
    assert!(v["choices"][0]["message"]["content"].is_string());
    // auto: either a text answer or calls that validate; never a broken call.
    for seed in 0..3 {
        let v = s.chat(json!({"messages": user("Use a tool to get the weather in Rome."), "tools": tools, "max_tokens": 80, "temperature": 1.0, "seed": seed}));
        let m = &v["choices"][0]["message"];
        if let Some(calls) = m["tool_calls"].as_array() {
            assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
            for call in calls {
                let _: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            }
        } else {
            assert!(m["content"].is_string());
        }
    }
    // Streamed: index, id and name first, then the arguments.
    let lines = s.stream("/v1/chat/completions", &json!({"model": s.model, "messages": user("Weather in Paris?"), "tools": [weather_tool()], "tool_choice": "required", "max_tokens": 300, "stream": true}));
    let cs = chunks(&lines);
    let deltas: Vec<&Value> =
        cs.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert!(deltas.len() >= 2);
    assert_eq!(deltas[0]["index"], 0);
    assert!(deltas[0]["id"].is_string() && deltas[0]["function"]["name"] == "get_weather");
    let mut args: Vec<String> = Vec::new();
    for d in &deltas {
        let k = d["index"].as_u64().unwrap() as usize;
        if k == args.len() {
            assert!(d["id"].is_string() && d["function"]["name"].is_string(), "a call opens with its id and name: {d}");
            args.push(String::new());
        }
        args[k].push_str(d["function"]["arguments"].as_str().unwrap_or_default());
    }
    for a in &args {
        assert!(validates(&params, &serde_json::from_str(a).unwrap()), "{a}");
    }
    assert!(deltas.len() > 2 * args.len(), "arguments stream in fragments as they are generated: {deltas:?}");
    let finishes: Vec<&Value> = cs.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    // A conversation carrying an earlier call and its result.
    let msgs = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"}
    ]);
    let v = s.chat(json!({"messages": msgs, "tools": tools, "tool_choice": "none", "max_tokens": 30}));
    assert!(v["choices"][0]["message"]["content"].is_string());
}

/// Tools as Pydantic v2 and OpenAI's SDK write them: `$defs`/`$ref` (a nested model, an enum, a list of nested
/// models), `Optional` (`anyOf` with null), a recursive model, `strict: true`; and two tools that both define
/// `#/$defs/Item`. Each function's parameters is its own schema document, so every call validates against it.
#[test]
fn tools_with_pydantic_schemas_defs_refs_recursion_and_strict() {
    let s = server();
    let order = json!({"type": "function", "function": {"name": "create_order", "description": "Place an order",
    "parameters": {
        "$defs": {
            "Address": {"properties": {"street": {"title": "Street", "type": "string", "maxLength": 40},
                "city": {"title": "City", "type": "string", "maxLength": 30}},
                "required": ["street", "city"], "title": "Address", "type": "object"},
            "Size": {"enum": ["small", "medium", "large"], "title": "Size", "type": "string"},
            "Item": {"properties": {"name": {"title": "Name", "type": "string", "maxLength": 30},
                "size": {"$ref": "#/$defs/Size"}, "quantity": {"title": "Quantity", "type": "integer"}},
                "required": ["name", "size", "quantity"], "title": "Item", "type": "object"}
        },
        "properties": {
            "customer": {"title": "Customer", "type": "string", "maxLength": 30},
            "address": {"$ref": "#/$defs/Address"},
            "items": {"items": {"$ref": "#/$defs/Item"}, "title": "Items", "type": "array", "maxItems": 3},
            "note": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}], "default": null, "title": "Note"}
        },
        "required": ["customer", "address", "items"], "title": "Order", "type": "object"
    }}});
    let tree = json!({"type": "function", "function": {"name": "draw_tree", "description": "Draw a small tree of labels",
    "parameters": {
        "$defs": {"Tree": {"properties": {"label": {"title": "Label", "type": "string", "maxLength": 12},
            "children": {"items": {"$ref": "#/$defs/Tree"}, "title": "Children", "type": "array", "maxItems": 2}},
            "required": ["label", "children"], "title": "Tree", "type": "object"}},
        "$ref": "#/$defs/Tree"
    }}});
    let strict = json!({"type": "function", "function": {"name": "set_alarm", "strict": true, "description": "Set an alarm",
        "parameters": {"type": "object", "properties": {"hour": {"type": "integer"}, "label": {"type": ["string", "null"]}},
            "required": ["hour", "label"], "additionalProperties": false}}});
    // Both define #/$defs/Item, differently.
    let colours = json!({"type": "function", "function": {"name": "paint", "description": "Paint items",
        "parameters": {"$defs": {"Item": {"enum": ["red", "green", "blue"]}}, "type": "object",
            "properties": {"colours": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1, "maxItems": 3}},
            "required": ["colours"]}}});
    let all = json!([order, tree, strict, colours]);
    let params_of = |name: &str| {
        all.as_array().unwrap().iter().find(|t| t["function"]["name"] == name).unwrap()["function"]["parameters"]
            .clone()
    };
    let check_calls = |v: &Value, want: Option<&str>| {
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        for call in c["message"]["tool_calls"].as_array().unwrap() {
            let name = call["function"]["name"].as_str().unwrap();
            if let Some(w) = want {
                assert_eq!(name, w);
            }
            let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(validates(&params_of(name), &args), "{name}: {args}");
        }
    };
    let prompts = [
        ("create_order", "Order two large pizzas for Ann at 1 Main Street, Springfield."),
        ("draw_tree", "Draw a tree: root A with children B and C."),
        ("set_alarm", "Wake me at 7."),
        ("paint", "Paint it red and blue."),
    ];
    for (name, prompt) in prompts {
        let named = json!({"type": "function", "function": {"name": name}});
        let v = s.chat(json!({"messages": user(prompt), "tools": all, "tool_choice": named, "max_tokens": 300, "temperature": 0.7, "seed": 1}));
        check_calls(&v, Some(name));
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"].as_array().unwrap().len(),
            1,
            "a named function is called once"
        );
    }
    let v = s.chat(json!({"messages": user(prompts[0].1), "tools": all, "tool_choice": "required", "max_tokens": 300, "temperature": 0.7, "seed": 2}));
    check_calls(&v, None);
    // auto: text, or calls that validate.
    for seed in 0..2 {
        let v = s.chat(
            json!({"messages": user(prompts[0].1), "tools": all, "max_tokens": 300, "temperature": 1.0, "seed": seed}),
        );
        if v["choices"][0]["message"]["tool_calls"].is_array() {
            check_calls(&v, None);
        }
    }
    // Streamed: the arguments concatenate to a call that validates.
    let lines = s.stream("/v1/chat/completions", &json!({"model": s.model, "messages": user(prompts[0].1), "tools": all, "tool_choice": {"type": "function", "function": {"name": "create_order"}}, "max_tokens": 300, "temperature": 0.7, "seed": 1, "stream": true}));
    let mut args: Vec<String> = Vec::new();
    for d in chunks(&lines)
        .iter()
        .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
    {
        let k = d["index"].as_u64().unwrap() as usize;
        if k == args.len() {
            args.push(String::new());
        }
        args[k].push_str(d["function"]["arguments"].as_str().unwrap_or_default());
    }
    assert!(!args.is_empty());
    for a in &args {
        assert!(validates(&params_of("create_order"), &serde_json::from_str(a).unwrap()), "{a}");
    }
    // A reference that points nowhere is a 400 naming the function.
    let broken = json!({"type": "function", "function": {"name": "broken", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}}}});
    let (st, e) = s.post(
        "/v1/chat/completions",
        &json!({"model": s.model, "messages": user("hi"), "tools": [broken], "tool_choice": "required"}),
    );
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"broken\""), "{e}");
}

#[test]
fn text_completions_in_every_prompt_form() {
    let s = server();
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"model": s.model, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{text}");
    usage_ok(&v);
    let (_, ids) = s.post("/tokenize", &json!({"prompt": "The capital of France is"}));
    let ids = ids["tokens"].clone();
    let (_, by_ids) = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 5, "temperature": 0}));
    assert_eq!(by_ids["choices"][0]["text"], text.as_str(), "token ids give the same completion");
    let (_, many) = s.post(
        "/v1/completions",
        &json!({"prompt": ["The capital of France is", "1, 2, 3,"], "max_tokens": 5, "temperature": 0, "n": 2}),
    );
    assert_eq!(many["choices"].as_array().unwrap().len(), 4);
    assert_eq!(many["choices"][0]["text"], text.as_str());
    let (_, lists) = s.post("/v1/completions", &json!({"prompt": [ids, ids], "max_tokens": 5, "temperature": 0}));
    assert_eq!(lists["choices"][1]["text"], text.as_str());
    let (_, echo) = s.post(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "echo": true}),
    );
    assert_eq!(echo["choices"][0]["text"], format!("The capital of France is{text}"));
    let (_, lp) = s.post(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 2}),
    );
    let l = &lp["choices"][0]["logprobs"];
    assert_eq!(l["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(l["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(l["top_logprobs"][0].as_object().unwrap().len(), 2);
    let joined: String = l["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, text);
    let lines = s.stream(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "stream": true}),
    );
    let streamed: String =
        chunks(&lines).iter().filter_map(|c| c["choices"][0]["text"].as_str().map(String::from)).collect();
    assert_eq!(streamed, text);
}

#[test]
fn models_health_metrics_native_routes_and_openapi() {
    let s = server();
    let (st, v) = s.get("/v1/models");
    assert_eq!(st, 200);
    let m = &v["data"][0];
    assert_eq!((m["object"].as_str(), m["owned_by"].as_str()), (Some("model"), Some("radixserve")));
    assert_eq!(m["root"], m["id"]);
    assert_eq!(m["max_model_len"], 8192);
    assert_eq!(s.get(&format!("/v1/models/{}", s.model)).0, 200);
    let (st, e) = s.get("/v1/models/gpt-4");
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(s.get("/health").0, 200);
    s.chat(json!({"messages": user("Hi"), "max_tokens": 3}));
    let (st, metrics) = s.get("/metrics");
    assert_eq!(st, 200);
    let text = metrics.as_str().unwrap();
    for name in [
        "radixserve_time_to_first_token_seconds_bucket",
        "radixserve_inter_token_latency_seconds",
        "radixserve_e2e_request_latency_seconds",
        "radixserve_queue_time_seconds",
        "radixserve_prompt_tokens_total",
        "radixserve_generation_tokens_total",
        "radixserve_cache_hit_tokens_total",
        "radixserve_num_running_requests",
        "radixserve_num_queued_requests",
        "radixserve_kv_slots_used",
        "radixserve_batch_size_requests",
        "radixserve_retractions_total",
        "radixserve_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let (st, g) = s.post(
        "/generate",
        &json!({"text": "The capital of France is", "sampling_params": {"max_new_tokens": 5, "temperature": 0}}),
    );
    assert_eq!(st, 200, "{g}");
    assert!(g["text"].as_str().unwrap().contains("Paris"));
    assert_eq!(g["meta_info"]["completion_tokens"], 5);
    assert_eq!(g["meta_info"]["finish_reason"]["type"], "length");
    let lines = s.stream("/generate", &json!({"text": "The capital of France is", "sampling_params": {"max_new_tokens": 5, "temperature": 0}, "stream": true}));
    let last = chunks(&lines).pop().unwrap();
    assert_eq!(last["text"], g["text"], "the streamed text is cumulative and ends where the whole answer does");
    assert_eq!(last["meta_info"]["finish_reason"]["type"], "length");
    let (_, t) = s.post("/tokenize", &json!({"prompt": "Hello world"}));
    let (st, d) = s.post("/detokenize", &json!({"tokens": t["tokens"]}));
    assert_eq!(st, 200);
    assert_eq!(d["prompt"], "Hello world");
    let (st, spec) = s.get("/openapi.json");
    assert_eq!(st, 200);
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/metrics",
        "/generate",
        "/flush_cache",
        "/tokenize",
        "/detokenize",
        "/openapi.json",
    ] {
        assert!(spec["paths"].get(p).is_some(), "{p} not described");
    }
    // The loaded model's limits, derived from the served model (SmolLM2: 49152 tokens, 8192 context).
    let common = &spec["components"]["schemas"]["CommonParams"]["properties"];
    let (_, models) = s.get("/v1/models");
    assert_eq!(common["max_tokens"]["maximum"], models["data"][0]["max_model_len"].as_u64().unwrap() - 1);
    assert_eq!(spec["components"]["schemas"]["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"], 49151);
}

#[test]
fn errors_use_the_openai_shape_and_the_server_keeps_serving() {
    let s = server();
    let bad = |body: &str, status: u16, needle: &str| {
        let (st, v) = s.post_raw("/v1/chat/completions", body, Some(KEY));
        assert_eq!(st, status, "{body} -> {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().unwrap().contains(needle), "{body}: {e}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{e}");
        v
    };
    let m = &s.model;
    bad("{not json", 400, "not valid JSON");
    bad(r#"[1, 2]"#, 400, "JSON object");
    // The model is resolved first (as vLLM does): an unknown one is a 404 whatever else is wrong.
    bad(r#"{"model": "x"}"#, 404, "does not exist");
    bad(&json!({"model": m}).to_string(), 400, "messages");
    let v = bad(&json!({"messages": user("hi"), "temperature": "hot"}).to_string(), 400, "temperature");
    assert_eq!(v["error"]["param"], "temperature");
    bad(&json!({"messages": user("hi"), "temperature": -0.5}).to_string(), 400, "temperature");
    bad(&json!({"messages": user("hi"), "logprobs": true, "top_logprobs": 21}).to_string(), 400, "top_logprobs");
    bad(&json!({"messages": user("hi"), "n": 0}).to_string(), 400, "n must be");
    bad(&json!({"messages": user("hi"), "max_tokens": -1}).to_string(), 400, "max_tokens");
    bad(&json!({"messages": [{"role": "wizard", "content": "hi"}]}).to_string(), 400, "role");
    bad(&json!({"messages": []}).to_string(), 400, "empty");
    bad(&json!({"messages": user("hi"), "tool_choice": "required"}).to_string(), 400, "tools");
    bad(&json!({"messages": user("hi"), "tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}).to_string(), 400, "nope");
    let v = bad(&json!({"messages": user("hi"), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true, "items": {"type": "integer"}}}}}).to_string(), 400, "uniqueItems");
    assert_eq!(v["error"]["param"], "response_format.json_schema.schema");
    bad(&json!({"messages": user("hi"), "response_format": {"type": "yaml"}}).to_string(), 400, "yaml");
    let long = "word ".repeat(9000);
    let v = bad(&json!({"messages": user(&long)}).to_string(), 400, "context length");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["param"].as_str()),
        (Some("context_length_exceeded"), Some("messages"))
    );
    // A prompt plus max_tokens past the context is refused, naming the field the client used (OpenAI and vLLM).
    for (field, n) in [("max_tokens", 1_000_000_000_000u64), ("max_completion_tokens", 100_000)] {
        let mut body = json!({"messages": user("hi"), "ignore_eos": true});
        body[field] = json!(n);
        let v = bad(&body.to_string(), 400, "context length");
        assert_eq!(
            (v["error"]["code"].as_str(), v["error"]["param"].as_str()),
            (Some("context_length_exceeded"), Some(field))
        );
    }
    let (st, v) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 100000}));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("max_tokens")), "{v}");
    let (st, v) = s.post("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 100000}}));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("sampling_params.max_new_tokens")), "{v}");
    let (st, v) = s.post("/generate", &json!({"text": "word ".repeat(9000)}));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("text")), "the prompt's field as given: {v}");
    let (st, v) =
        s.post_raw("/v1/chat/completions", &json!({"model": "gpt-4", "messages": user("hi")}).to_string(), Some(KEY));
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (st, _) = s.post("/v1/nothing", &json!({}));
    assert_eq!(st, 404);
    let (st, _) = s.get("/v1/chat/completions");
    assert_eq!(st, 405);
    let (st, v) = s.post_raw("/v1/chat/completions", &json!({"model": m, "messages": user("hi")}).to_string(), None);
    assert_eq!((st, v["error"]["type"].as_str()), (401, Some("authentication_error")));
    let (st, _) = s.post_raw(
        "/v1/chat/completions",
        &json!({"model": m, "messages": user("hi")}).to_string(),
        Some("test-key-12"),
    );
    assert_eq!(st, 401);
    let huge = json!({"messages": user(&"x".repeat(2 << 20))}).to_string();
    let (st, v) = s.post_raw("/v1/chat/completions", &huge, Some(KEY));
    assert_eq!(st, 413, "{v}");
    let (st, _) = s.post("/v1/completions", &json!({"prompt": "a", "suffix": "b"}));
    assert_eq!(st, 400);
    let (st, _) = s.post("/v1/completions", &json!({"prompt": [99999999]}));
    assert_eq!(st, 400);
    // Still serving.
    let v = s.chat(json!({"messages": user("Say yes."), "max_tokens": 3}));
    usage_ok(&v);
}

#[test]
fn thirty_concurrent_mixed_requests() {
    let s = server();
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"], "additionalProperties": false});
    let params = weather_tool()["function"]["parameters"].clone();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..30)
            .map(|i| {
                let (schema, params) = (schema.clone(), params.clone());
                scope.spawn(move || match i % 4 {
                    0 => {
                        let v = s.chat(json!({"messages": user(&format!("Tell me fact number {i} about space.")), "max_tokens": 24}));
                        usage_ok(&v);
                    }
                    1 => {
                        let lines = s.stream("/v1/chat/completions", &json!({"model": s.model, "messages": user("Tell me a joke."), "max_tokens": 24, "stream": true, "seed": i}));
                        let cs = chunks(&lines);
                        assert_eq!(cs.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count(), 1);
                    }
                    2 => {
                        let v = s.chat(json!({"messages": user("Answer as JSON: what is 2+2?"), "max_tokens": 200, "seed": i,
                            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}));
                        let doc: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
                        assert!(validates(&schema, &doc));
                    }
                    _ => {
                        let v = s.chat(json!({"messages": user("Weather in Berlin?"), "tools": [weather_tool()], "tool_choice": "required", "max_tokens": 300, "seed": i}));
                        let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_string();
                        assert!(validates(&params, &serde_json::from_str(&args).unwrap()));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn a_disconnected_stream_is_cancelled() {
    let s = server();
    let before = aborts(s);
    {
        let resp = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
            .post(s.url("/v1/chat/completions"))
            .header("authorization", &format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .send(json!({"model": s.model, "messages": user("Write a very long essay."), "max_tokens": 2000, "ignore_eos": true, "stream": true}).to_string())
            .unwrap();
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(line.starts_with("data:"));
    } // dropped: the connection closes
    let t0 = std::time::Instant::now();
    while aborts(s) <= before {
        assert!(t0.elapsed().as_secs() < 60, "the request was not cancelled");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn aborts(s: &common::Server) -> u64 {
    let (_, m) = s.get("/metrics");
    m.as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("radixserve_requests_total{{model=\"{}\",finish_reason=\"abort\"}}", s.model)))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0, |v| v.parse().unwrap())
}
