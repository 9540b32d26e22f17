//! Sampling defaults: what a request that leaves a sampling field unset gets, as vLLM (`--generation-config`) and
//! SGLang (`--sampling-defaults`) do. By default the model's own recommendation where it ships one (GGUF
//! `general.sampling.*`, `generation_config.json`), else OpenAI's (temperature 1, nothing else); `serve
//! --sampling-defaults` takes `model`, `openai`, or a JSON object of values laid over the model's.

use runtime::SamplingParams;
use serde::{Deserialize, Serialize};

/// Values for the sampling fields a request leaves unset; `None`: OpenAI's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
}

/// `--sampling-defaults`.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultsSource {
    /// The model's recommendation (where it ships none: OpenAI's).
    Model,
    /// OpenAI's: temperature 1 and nothing else.
    OpenAi,
    /// These values over the model's.
    Values(SamplingDefaults),
}

impl std::str::FromStr for DefaultsSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "model" => Ok(DefaultsSource::Model),
            "openai" => Ok(DefaultsSource::OpenAi),
            json => serde_json::from_str(json).map(DefaultsSource::Values).map_err(|e| {
                format!(
                    "expected `model`, `openai` or a JSON object like {{\"temperature\": 0.2, \"top_p\": 0.9}}: {e}"
                )
            }),
        }
    }
}

impl SamplingDefaults {
    /// The defaults `source` gives for a model that ships `hints`; an error names a value out of range.
    pub fn resolve(source: &DefaultsSource, hints: &kernels::SamplingHints) -> anyhow::Result<Self> {
        let model = SamplingDefaults {
            temperature: hints.temperature,
            top_p: hints.top_p,
            top_k: hints.top_k,
            min_p: hints.min_p,
            repetition_penalty: hints.repetition_penalty,
            ..Default::default()
        };
        let d = match source {
            DefaultsSource::Model => model,
            DefaultsSource::OpenAi => SamplingDefaults::default(),
            DefaultsSource::Values(v) => SamplingDefaults {
                temperature: v.temperature.or(model.temperature),
                top_p: v.top_p.or(model.top_p),
                top_k: v.top_k.or(model.top_k),
                min_p: v.min_p.or(model.min_p),
                repetition_penalty: v.repetition_penalty.or(model.repetition_penalty),
                presence_penalty: v.presence_penalty,
                frequency_penalty: v.frequency_penalty,
            },
        };
        let mut check = SamplingParams::default();
        d.apply(&mut check);
        check.validate().map_err(|e| anyhow::anyhow!("--sampling-defaults: {e}"))?;
        Ok(d)
    }

    /// Sets every field these defaults have a value for.
    pub fn apply(&self, p: &mut SamplingParams) {
        let set = |slot: &mut f32, v: Option<f32>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut p.temperature, self.temperature);
        set(&mut p.top_p, self.top_p);
        set(&mut p.min_p, self.min_p);
        set(&mut p.repetition_penalty, self.repetition_penalty);
        set(&mut p.presence_penalty, self.presence_penalty);
        set(&mut p.frequency_penalty, self.frequency_penalty);
        if let Some(k) = self.top_k {
            p.top_k = k as usize;
        }
    }

    /// For the startup log: `temperature=0.2 top_p=0.9`, or OpenAI's.
    pub fn describe(&self) -> String {
        let f = |name: &str, v: Option<f32>| v.map(|v| format!("{name}={v}"));
        let parts: Vec<String> = [
            f("temperature", self.temperature),
            f("top_p", self.top_p),
            self.top_k.map(|k| format!("top_k={k}")),
            f("min_p", self.min_p),
            f("repetition_penalty", self.repetition_penalty),
            f("presence_penalty", self.presence_penalty),
            f("frequency_penalty", self.frequency_penalty),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "OpenAI's (temperature=1)".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_layer_and_are_checked() {
        let hints = kernels::SamplingHints { temperature: Some(0.6), top_k: Some(20), ..Default::default() };
        let model = SamplingDefaults::resolve(&"model".parse().unwrap(), &hints).unwrap();
        assert_eq!((model.temperature, model.top_k, model.top_p), (Some(0.6), Some(20), None));
        assert_eq!(SamplingDefaults::resolve(&"openai".parse().unwrap(), &hints).unwrap(), SamplingDefaults::default());
        let mine: DefaultsSource = r#"{"temperature": 0.2, "top_p": 0.9}"#.parse().unwrap();
        let d = SamplingDefaults::resolve(&mine, &hints).unwrap();
        assert_eq!((d.temperature, d.top_p, d.top_k), (Some(0.2), Some(0.9), Some(20)), "over the model's");
        assert_eq!(d.describe(), "temperature=0.2 top_p=0.9 top_k=20");
        assert!(r#"{"temprature": 0.2}"#.parse::<DefaultsSource>().is_err(), "a misspelt field is refused");
        let bad: DefaultsSource = r#"{"top_p": 1.5}"#.parse().unwrap();
        assert!(SamplingDefaults::resolve(&bad, &hints).unwrap_err().to_string().contains("top_p"));
        let mut p = SamplingParams::default();
        d.apply(&mut p);
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.2, 0.9, 20));
    }
}
