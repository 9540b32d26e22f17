//! The Responses API over HTTP on the real model: shapes, streaming events, stored responses across a restart,
//! `previous_response_id` chains through the radix cache, grammar-guaranteed outputs, and 400s naming the field.

mod common;

use common::{start, user, validates, weather_tool};
use serde_json::{json, Value};

fn post(s: &common::Server, body: Value) -> Value {
    let (st, v) = s.post("/v1/responses", &body);
    assert_eq!(st, 200, "{body} -> {v}");
    v
}

fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap().to_string()))
        .collect()
}

fn tool(name: &str) -> Value {
    let t = weather_tool();
    let f = &t["function"];
    json!({"type": "function", "name": name, "description": f["description"], "parameters": f["parameters"], "strict": true})
}

#[test]
fn responses_shapes_chains_stored_and_restarted() {
    let dir = common::state_dir();
    let dir_arg = dir.display().to_string();
    let s = start(common::args(&["--state-dir", &dir_arg]), true);
    let r = post(
        &s,
        json!({"input": "What is the capital of France?", "max_output_tokens": 16, "temperature": 0,
                            "metadata": {"k": "v"}}),
    );
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert!(matches!(r["status"].as_str(), Some("completed" | "incomplete")), "{r}");
    if r["status"] == "incomplete" {
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }
    assert_eq!(r["metadata"]["k"], "v");
    let out = &r["output"][0];
    assert_eq!((out["type"].as_str(), out["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(out["content"][0]["type"], "output_text");
    let u = &r["usage"];
    assert_eq!(u["total_tokens"], u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap());
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64());

    // Three turns chained by previous_response_id: the third's input is mostly served from the radix cache.
    let t2 = post(
        &s,
        json!({"input": "And of Germany?", "previous_response_id": r["id"], "max_output_tokens": 16,
                             "temperature": 0}),
    );
    let t3 = post(
        &s,
        json!({"input": "And of Italy?", "previous_response_id": t2["id"], "max_output_tokens": 16,
                             "temperature": 0}),
    );
    let (in2, in3) = (t2["usage"]["input_tokens"].as_u64().unwrap(), t3["usage"]["input_tokens"].as_u64().unwrap());
    let cached3 = t3["usage"]["input_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(in3 > in2, "the third turn's prompt holds the second's");
    assert!(cached3 as f64 >= 0.9 * in2 as f64, "cached {cached3} of the third turn, second turn's input {in2}");

    // Retrieve, input items, delete.
    let (st, got) = s.get(&format!("/v1/responses/{}", t2["id"].as_str().unwrap()));
    assert_eq!(st, 200);
    assert_eq!(got, t2);
    let (st, items) = s.get(&format!("/v1/responses/{}/input_items", t2["id"].as_str().unwrap()));
    assert_eq!(st, 200, "{items}");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["content"][0]["text"], "And of Germany?");

    // store: false keeps nothing.
    let gone = post(&s, json!({"input": "Hi", "store": false, "max_output_tokens": 2}));
    let (st, _) = s.get(&format!("/v1/responses/{}", gone["id"].as_str().unwrap()));
    assert_eq!(st, 404);
    let (st, e) = s.post("/v1/responses", &json!({"input": "Hi", "previous_response_id": gone["id"]}));
    assert_eq!((st, e["error"]["param"].as_str()), (404, Some("previous_response_id")), "{e}");

    // A restart: the chain survives.
    drop(s);
    let s = start(common::args(&["--state-dir", &dir_arg]), true);
    let (st, again) = s.get(&format!("/v1/responses/{}", t3["id"].as_str().unwrap()));
    assert_eq!(st, 200);
    assert_eq!(again, t3);
    let t4 = post(&s, json!({"input": "And of Spain?", "previous_response_id": t3["id"], "max_output_tokens": 8}));
    assert!(t4["usage"]["input_tokens"].as_u64().unwrap() > in3);
    let req = reqwest_delete(&s, t4["id"].as_str().unwrap());
    assert_eq!(req, 200);
    let (st, _) = s.get(&format!("/v1/responses/{}", t4["id"].as_str().unwrap()));
    assert_eq!(st, 404);
}

fn reqwest_delete(s: &common::Server, id: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let resp = agent
        .delete(s.url(&format!("/v1/responses/{id}")))
        .header("authorization", &format!("Bearer {}", common::KEY))
        .call()
        .unwrap();
    resp.status().as_u16()
}

#[test]
fn tools_formats_streaming_and_errors() {
    let s = common::server();
    // required and named tool choices give calls whose arguments validate.
    let params = weather_tool()["function"]["parameters"].clone();
    for choice in [json!("required"), json!({"type": "function", "name": "get_weather"})] {
        let r = post(
            s,
            json!({"input": "Weather in Paris?", "tools": [tool("get_weather")], "tool_choice": choice,
                               "temperature": 0}),
        );
        let calls: Vec<&Value> =
            r["output"].as_array().unwrap().iter().filter(|i| i["type"] == "function_call").collect();
        assert!(!calls.is_empty(), "{r}");
        for c in calls {
            assert_eq!(c["name"], "get_weather");
            assert!(c["call_id"].as_str().unwrap().starts_with("call_"));
            assert!(validates(&params, &serde_json::from_str(c["arguments"].as_str().unwrap()).unwrap()), "{c}");
        }
    }
    // text.format json_schema always validates.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                        "population": {"type": "integer", "minimum": 0, "maximum": 100000000}}, "required": ["city", "population"],
                        "additionalProperties": false});
    let r = post(
        s,
        json!({"input": "Describe Paris as JSON.", "text": {"format": {"type": "json_schema",
                           "name": "city", "schema": schema, "strict": true}}, "temperature": 0}),
    );
    assert!(validates(&schema, &serde_json::from_str(&output_text(&r)).unwrap()), "{r}");

    // Streamed: events in order with increasing sequence numbers; assembled, the same response.
    let body = json!({"input": "Weather in Paris?", "tools": [tool("get_weather")], "tool_choice": "required",
                      "temperature": 0, "store": false});
    let plain = post(s, body.clone());
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events: Vec<Value> =
        s.stream("/v1/responses", &sbody).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(*kinds.last().unwrap(), "response.completed");
    assert!(events.iter().enumerate().all(|(i, e)| e["sequence_number"] == i), "{kinds:?}");
    // Per call: its deltas add up to its arguments.
    let dones: Vec<&Value> = events.iter().filter(|e| e["type"] == "response.function_call_arguments.done").collect();
    assert!(!dones.is_empty());
    for done in dones {
        let args: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta" && e["item_id"] == done["item_id"])
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(args, done["arguments"].as_str().unwrap(), "deltas add up to the arguments");
    }
    let final_r = &events.last().unwrap()["response"];
    let strip = |r: &Value| -> Vec<(Value, Value)> {
        r["output"].as_array().unwrap().iter().map(|i| (i["name"].clone(), i["arguments"].clone())).collect()
    };
    assert_eq!(strip(final_r), strip(&plain), "streamed = non-streamed (greedy)");
    assert_eq!(final_r["usage"]["output_tokens"], plain["usage"]["output_tokens"]);

    // Text streamed: deltas add up to the done text and to the final output.
    let lines = s.stream(
        "/v1/responses",
        &json!({"input": user("Say hello.")[0]["content"], "stream": true,
                                                  "max_output_tokens": 12, "temperature": 0}),
    );
    let events: Vec<Value> = lines.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = events.iter().find(|e| e["type"] == "response.output_text.done").unwrap();
    assert_eq!(text, done["text"].as_str().unwrap());
    assert_eq!(output_text(&events.last().unwrap()["response"]), text);

    // Bad input: 400s naming the field.
    for (body, param) in [
        (json!({"input": "hi", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"input": "hi", "temperature": "hot"}), "temperature"),
        (json!({"input": "hi", "max_output_tokens": -1}), "max_output_tokens"),
        (json!({"input": [{"role": "wizard", "content": "hi"}]}), "input[0].role"),
        (json!({"input": [{"type": "function_call_output", "output": "x"}]}), "input[0].call_id"),
        (json!({"input": [{"type": "image_generation_call"}]}), "input[0].type"),
        (json!({"input": "hi", "text": {"format": {"type": "xml"}}}), "text.format.type"),
        (json!({"input": "hi", "truncation": "sometimes"}), "truncation"),
        (json!({"input": "hi", "include": ["file_search_call.results"]}), "include"),
        (json!({"input": 3}), "input"),
        (json!({}), "input"),
    ] {
        let (st, e) = s.post("/v1/responses", &body);
        assert_eq!((st, e["error"]["param"].as_str()), (400, Some(param)), "{body} -> {e}");
    }
    let (st, e) = s.post("/v1/responses", &json!({"input": "hi", "tools": [{"type": "web_search"}]}));
    assert!(st == 400 && e["error"]["message"].as_str().unwrap().contains("web_search"), "{e}");
    let (st, _) = s.get("/v1/responses/resp_nope");
    assert_eq!(st, 404);
}
