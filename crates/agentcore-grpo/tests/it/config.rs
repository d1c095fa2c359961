//! `GRPOConfig` parsing and validation: three formats, defaults, unknown fields, ranges.

use agentcore_grpo::advantages::ScaleRewards;
use agentcore_grpo::config::KNOWN_FIELDS;
use agentcore_grpo::loss::LossType;
use agentcore_grpo::{ConfigFormat, GRPOConfig, GrpoError};
use rust_decimal_macros::dec;

const FORMATS: [ConfigFormat; 3] = [ConfigFormat::Json, ConfigFormat::Yaml, ConfigFormat::Toml];

#[test]
fn the_same_config_in_three_formats() {
    let json = r#"{"n_iterations": 500, "batch_size": 32, "learning_rate": 0.0005,
        "max_budget_usd": 50.25, "loss_type": "dr_grpo", "scale_rewards": "none",
        "epsilon_high": 0.28, "top_k": 50, "reward_shaping": {"enabled": true, "step_penalty": 0.02}}"#;
    let yaml = "n_iterations: 500\nbatch_size: 32\nlearning_rate: 0.0005\nmax_budget_usd: 50.25\n\
        loss_type: dr_grpo\nscale_rewards: none\nepsilon_high: 0.28\ntop_k: 50\n\
        reward_shaping:\n  enabled: true\n  step_penalty: 0.02\n";
    let toml = "n_iterations = 500\nbatch_size = 32\nlearning_rate = 0.0005\n\
        max_budget_usd = \"50.25\"\nloss_type = \"dr_grpo\"\nscale_rewards = \"none\"\n\
        epsilon_high = 0.28\ntop_k = 50\n[reward_shaping]\nenabled = true\nstep_penalty = 0.02\n";
    let from_json = GRPOConfig::from_json_str(json).expect("valid JSON");
    assert_eq!(from_json, GRPOConfig::from_yaml_str(yaml).expect("valid YAML"));
    assert_eq!(from_json, GRPOConfig::from_toml_str(toml).expect("valid TOML"));
    assert_eq!(from_json.max_budget_usd, dec!(50.25));
    assert_eq!(from_json.loss_type, LossType::DrGrpo);
    assert_eq!(from_json.scale_rewards, ScaleRewards::None);
    assert_eq!(from_json.top_k, Some(50));
    assert!((from_json.effective_epsilon_high() - 0.28).abs() < 1e-15);
    assert!(from_json.reward_shaping.enabled);
    // Absent fields keep their defaults, nested ones too.
    assert_eq!(from_json.n_trajectories_per_query, 8);
    assert!((from_json.reward_shaping.tool_call_bonus - 0.1).abs() < 1e-15);
}

#[test]
fn serialized_configs_round_trip_in_every_format() {
    let config = GRPOConfig {
        n_iterations: 77,
        max_budget_usd: dec!(12.34),
        epsilon_high: Some(0.3),
        early_stopping_patience: Some(4),
        loss_type: LossType::Gspo,
        ..GRPOConfig::default()
    };
    for format in FORMATS {
        let text = config.to_string_format(format);
        let back = GRPOConfig::from_str_format(&text, format)
            .unwrap_or_else(|e| panic!("{format} round trip failed: {e}\n{text}"));
        assert_eq!(back, config, "{format}");
    }
}

#[test]
fn empty_documents_and_null_mean_defaults() {
    assert_eq!(GRPOConfig::from_json_str("{}").expect("valid"), GRPOConfig::default());
    assert_eq!(GRPOConfig::from_yaml_str("").expect("valid"), GRPOConfig::default());
    assert_eq!(GRPOConfig::from_toml_str("").expect("valid"), GRPOConfig::default());
    assert_eq!(
        GRPOConfig::from_value(serde_json::Value::Null).expect("valid"),
        GRPOConfig::default()
    );
}

#[test]
fn budget_accepts_numbers_and_decimal_strings() {
    let a = GRPOConfig::from_json_str(r#"{"max_budget_usd": 0.1}"#).expect("valid");
    let b = GRPOConfig::from_json_str(r#"{"max_budget_usd": "0.10"}"#).expect("valid");
    assert_eq!(a.max_budget_usd, dec!(0.1));
    assert_eq!(a.max_budget_usd, b.max_budget_usd);
}

#[test]
fn unknown_fields_are_named_with_a_suggestion() {
    let err = GRPOConfig::from_json_str(r#"{"n_iteration": 5}"#).unwrap_err();
    assert_eq!(
        err,
        GrpoError::UnknownConfigField {
            field: "n_iteration".into(),
            suggestion: Some("n_iterations".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid config: unknown field `n_iteration` (did you mean `n_iterations`?)"
    );
    assert_eq!(err.config_field(), Some("n_iteration"));

    let err = GRPOConfig::from_toml_str("[reward_shaping]\nbonus = 1\n").unwrap_err();
    assert_eq!(err.config_field(), Some("reward_shaping.bonus"));

    let err = GRPOConfig::from_yaml_str("frobnicate: true\n").unwrap_err();
    assert_eq!(err.to_string(), "invalid config: unknown field `frobnicate`");
}

#[test]
fn wrong_types_name_the_field() {
    let err = GRPOConfig::from_json_str(r#"{"batch_size": "sixteen"}"#).unwrap_err();
    assert_eq!(err.config_field(), Some("batch_size"));
    let err = GRPOConfig::from_yaml_str("loss_type: ppo\n").unwrap_err();
    assert_eq!(err.config_field(), Some("loss_type"));
    assert!(err.to_string().contains("expected one of `grpo`, `dapo`, `dr_grpo`, `gspo`"), "{err}");
    let err = GRPOConfig::from_json_str(r#"{"reward_shaping": {"enabled": "yes"}}"#).unwrap_err();
    assert_eq!(err.config_field(), Some("reward_shaping.enabled"));
}

#[test]
fn documents_that_are_not_maps_are_refused() {
    for (text, format) in
        [("[1, 2]", ConfigFormat::Json), ("- 1\n", ConfigFormat::Yaml), ("7", ConfigFormat::Json)]
    {
        let err = GRPOConfig::from_str_format(text, format).unwrap_err();
        assert!(err.to_string().contains("must be"), "{format}: {err}");
    }
    assert!(GRPOConfig::from_json_str(r#"{"batch_size": 4} trailing"#).is_err());
    assert!(GRPOConfig::from_toml_str("batch_size = ").is_err());
}

#[test]
fn every_range_rule_names_field_rule_and_value() {
    let cases: &[(&str, &str)] = &[
        (r#"{"n_iterations": 0}"#, "`n_iterations` must be in 1..=10000, got 0"),
        (r#"{"n_iterations": 10001}"#, "`n_iterations` must be in 1..=10000, got 10001"),
        (r#"{"batch_size": 200}"#, "`batch_size` must be in 1..=128, got 200"),
        (
            r#"{"n_trajectories_per_query": 17}"#,
            "`n_trajectories_per_query` must be in 1..=16, got 17",
        ),
        (r#"{"learning_rate": 0}"#, "`learning_rate` must be > 0 and <= 1, got 0"),
        (r#"{"learning_rate": 1.5}"#, "`learning_rate` must be > 0 and <= 1, got 1.5"),
        (r#"{"max_budget_usd": -0.01}"#, "`max_budget_usd` must be >= 0, got -0.01"),
        (r#"{"checkpoint_interval": 0}"#, "`checkpoint_interval` must be >= 1, got 0"),
        (
            r#"{"max_steps_per_trajectory": 101}"#,
            "`max_steps_per_trajectory` must be in 1..=100, got 101",
        ),
        (r#"{"gamma": 1.01}"#, "`gamma` must be in 0..=1, got 1.01"),
        (r#"{"epsilon": 1}"#, "`epsilon` must be > 0 and < 1, got 1"),
        (r#"{"epsilon_high": 0}"#, "`epsilon_high` must be > 0 and <= 10 when given, got 0"),
        (r#"{"beta": -0.1}"#, "`beta` must be >= 0 and finite, got -0.1"),
        (r#"{"temperature": 0}"#, "`temperature` must be > 0 and <= 10, got 0"),
        (r#"{"top_p": 0}"#, "`top_p` must be > 0 and <= 1, got 0"),
        (r#"{"top_k": 0}"#, "`top_k` must be >= 1 when given (leave it out to disable), got 0"),
        (r#"{"max_completion_length": 0}"#, "`max_completion_length` must be in 1..=32768, got 0"),
        (r#"{"eval_interval": 0}"#, "`eval_interval` must be >= 1, got 0"),
        (
            r#"{"early_stopping_patience": 0}"#,
            "`early_stopping_patience` must be >= 1 when given (leave it out to disable), got 0",
        ),
        (r#"{"max_grad_norm": 0}"#, "`max_grad_norm` must be > 0 and finite, got 0"),
        (
            r#"{"reward_shaping": {"tool_call_bonus": -1}}"#,
            "`reward_shaping.tool_call_bonus` must be >= 0 and finite, got -1",
        ),
    ];
    for (json, message) in cases {
        let err = GRPOConfig::from_json_str(json).unwrap_err();
        assert_eq!(err.to_string(), format!("invalid config: {message}"), "for {json}");
        let GrpoError::InvalidConfig(field_error) = &err else { panic!("{err:?}") };
        assert!(message.starts_with(&format!("`{}`", field_error.field)));
    }
}

#[test]
fn non_finite_numbers_from_yaml_and_toml_are_reported_as_such() {
    let err = GRPOConfig::from_yaml_str("learning_rate: .nan\n").unwrap_err();
    assert_eq!(err.to_string(), "invalid config: `learning_rate` must be > 0 and <= 1, got NaN");
    let err = GRPOConfig::from_toml_str("beta = inf\n").unwrap_err();
    assert_eq!(err.to_string(), "invalid config: `beta` must be >= 0 and finite, got inf");
}

#[test]
fn violations_lists_every_broken_rule() {
    let config = GRPOConfig { batch_size: 0, gamma: 2.0, top_p: 0.0, ..GRPOConfig::default() };
    let fields: Vec<String> = config.violations().into_iter().map(|v| v.field).collect();
    assert_eq!(fields, vec!["batch_size", "gamma", "top_p"]);
}

#[test]
fn a_group_of_one_is_valid_but_warned_about() {
    let config = GRPOConfig::from_json_str(r#"{"n_trajectories_per_query": 1}"#).expect("valid");
    assert!(
        config.warnings().iter().any(|w| w.contains("cannot learn")),
        "{:?}",
        config.warnings()
    );
    assert!(GRPOConfig::default().warnings().is_empty());
}

#[test]
fn known_fields_list_matches_the_struct() {
    // Serialize a config with every optional field set, and collect the dotted keys.
    let full = GRPOConfig {
        epsilon_high: Some(0.28),
        top_k: Some(5),
        early_stopping_patience: Some(3),
        ..GRPOConfig::default()
    };
    let value = serde_json::to_value(&full).expect("serializes");
    let mut keys = Vec::new();
    for (k, v) in value.as_object().expect("object") {
        keys.push(k.clone());
        if let Some(nested) = v.as_object() {
            keys.extend(nested.keys().map(|n| format!("{k}.{n}")));
        }
    }
    keys.sort();
    let mut known: Vec<String> = KNOWN_FIELDS.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(keys, known);
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../../../examples/configs/quickstart.yaml");
    let config = GRPOConfig::from_yaml_str(text).expect("the README's example must stay valid");
    assert_eq!(config.n_iterations, 100);
    assert_eq!(config.max_budget_usd, dec!(50));
}
