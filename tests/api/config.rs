//! Configuration as users write it: file, environment overrides, `${VAR}`, unknown keys.

use crate::helpers::{pegabridge, stderr, stdout};
use std::fs;
use std::process::{Command, Output};

/// `pegabridge config check` in a folder whose `pegabridge.toml` is `toml`.
fn config_check(toml: &str) -> Output {
    crate::helpers::with_config(toml, &["config", "check"])
}

#[test]
fn an_unknown_key_is_an_error_naming_the_file_and_the_key() {
    let out = config_check("[templates]\ndirr = \"x\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("dirr"), "{err}");
    assert!(err.contains("pegabridge.toml"), "{err}");
    assert!(err.contains("templates"), "{err}");
}

#[test]
fn an_unknown_key_names_its_line_and_the_closest_valid_key() {
    let out = config_check("[server]\nlisten = \"127.0.0.1:8080\"\n\n[pega]\nendpoint = \"http://127.0.0.1:9/x\"\ntimeout_sec = 5\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("pegabridge.toml:6: unknown key `pega.timeout_sec`"),
        "{err}"
    );
    assert!(err.contains("did you mean `timeout_secs`?"), "{err}");
    assert!(!err.contains("default.pega"), "no profile name: {err}");
    // A key nothing is close to lists the table's keys instead.
    let out = config_check("[store]\nzzzzzzzzzzzz = 1\n");
    let err = stderr(&out);
    assert!(
        err.contains("pegabridge.toml:2: unknown key `store.zzzzzzzzzzzz`"),
        "{err}"
    );
    assert!(err.contains("the keys here are url, synchronous"), "{err}");
}

#[test]
fn configured_variables_and_expression_are_what_prepare_writes() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("custom.toml"),
        "[[variables]]\nname = \"OfferCode\"\ndefault = \"${OFFER_DEFAULT}\"\n\n[templates]\nexpression = \"[%%name%%|'%default%']\"\n",
    )
    .unwrap();
    fs::write(tmp.path().join("a.html"), "<html><head></head></html>").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(["--config", "custom.toml", "prepare", "a.html", "--in-place"])
        .current_dir(tmp.path())
        .env("OFFER_DEFAULT", "SPRING")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(tmp.path().join("a.html")).unwrap(),
        "<html><head><meta name=\"OfferCode\" content=\"[%OfferCode%|'SPRING']\"></head></html>"
    );
}

#[test]
fn environment_variables_override_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a.html"), "<html><head></head></html>").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(["prepare", "a.html", "--in-place"])
        .current_dir(tmp.path())
        .env("PEGABRIDGE_TEMPLATES__EXPRESSION", "<%= %name% %>")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(tmp.path().join("a.html")).unwrap();
    assert!(
        text.contains("content=\"&lt;%= UniqueOfferId %>\""),
        "{text}"
    );
}

#[test]
fn an_unset_environment_variable_is_named() {
    let out = config_check("[[variables]]\nname = \"X\"\ndefault = \"${PEGABRIDGE_TEST_UNSET}\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PEGABRIDGE_TEST_UNSET"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_config_file_given_explicitly_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = pegabridge(tmp.path(), &["--config", "nope.toml", "config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.toml does not exist"));
}

#[test]
fn the_example_configuration_loads() {
    let out = pegabridge(&crate::helpers::root(), &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("UniqueOfferId, InteractionId"));
}

#[test]
fn a_mapping_with_an_unknown_key_or_missing_template_is_named_by_config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mappings = tmp.path().join("mappings");
    fs::create_dir_all(&mappings).unwrap();
    let offer = fs::read_to_string(crate::helpers::root().join("mappings/offer.toml")).unwrap();
    fs::write(
        mappings.join("typo.toml"),
        offer.replace("subject =", "subjekt ="),
    )
    .unwrap();
    fs::write(mappings.join("lost.toml"), &offer).unwrap();
    let out = pegabridge(tmp.path(), &["config", "check", "--allow-defaults"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("typo.toml") && err.contains("subjekt"),
        "{err}"
    );
    assert!(err.contains("lost.toml: key `template`"), "{err}");
}

#[test]
fn a_lease_no_longer_than_the_post_timeout_is_refused() {
    let out = config_check(
        "[pega]\nendpoint = \"http://127.0.0.1:9/in\"\ntimeout_secs = 30\nlease_secs = 30\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("pega.lease_secs (30)"), "{err}");
    assert!(err.contains("pega.timeout_secs (30)"), "{err}");
}

#[test]
fn framing_and_hop_by_hop_headers_are_refused_naming_the_key() {
    for name in ["Content-Length", "Transfer-Encoding", "Host", "Connection"] {
        let out = config_check(&format!(
            "[pega]\nendpoint = \"https://pega.example/x\"\n[pega.headers]\n{name} = \"5\"\n"
        ));
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = stderr(&out);
        assert!(err.contains(&format!("pega.headers.{name}")), "{err}");
    }
    let out = config_check("[pega.headers]\n\"X-Bad\" = \"line\\nbreak-secret\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("pega.headers.X-Bad"), "{err}");
    assert!(
        !err.contains("break-secret"),
        "the value is a secret: {err}"
    );
}

#[test]
fn retry_settings_that_cannot_work_are_refused_all_at_once() {
    let out = config_check(
        "[pega.retry]\nbase_ms = 5000\nmax_delay_secs = 1\nmax_attempts = 0\n[pega]\nconcurrency = 0\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for key in [
        "pega.retry.base_ms",
        "pega.retry.max_attempts",
        "pega.concurrency",
    ] {
        assert!(err.contains(key), "{key} is reported: {err}");
    }
}

#[test]
fn tls_files_that_are_missing_or_not_pem_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("not.pem"), "hello").unwrap();
    fs::write(
        tmp.path().join("pegabridge.toml"),
        "[pega]\nendpoint = \"https://pega.example/x\"\n[pega.tls]\nca_file = \"not.pem\"\nclient_cert = \"missing.pem\"\nclient_key = \"not.pem\"\n",
    )
    .unwrap();
    let out = pegabridge(tmp.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("pega.tls.ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
    assert!(
        err.contains("pega.tls.client_cert") && err.contains("missing.pem"),
        "{err}"
    );
    assert!(
        err.contains("pega.tls.client_key") && err.contains("no PEM private key"),
        "{err}"
    );
    // `serve` loads the configuration the same way and refuses it the same way.
    let serve = pegabridge(tmp.path(), &["serve"]);
    assert_eq!(serve.status.code(), Some(2));
    assert!(
        stderr(&serve).contains("pega.tls.ca_file"),
        "{}",
        stderr(&serve)
    );
}

#[test]
fn delivery_settings_that_cannot_work_are_refused_naming_the_key() {
    let out = config_check(
        "[pega]\nendpoint = \"http://127.0.0.1:9/in\"\nformat = \"capture-response\"\nbatch_size = 4\nmin_concurrency = 8\nmax_concurrency = 2\n[pega.capture_response]\nissue = { option = \"UniqueOfferId\", value = \"x\" }\n[pega.capture_response.outcomes]\nreads = \"Seen\"\n[pega.breaker]\nfailure_ratio = 1.5\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for key in [
        "pega.capture_response.container_name",
        "pega.batch_size",
        "pega.max_concurrency (2)",
        "pega.capture_response.issue",
        "pega.capture_response.outcomes.reads",
        "pega.breaker.failure_ratio",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn kafka_settings_that_cannot_work_are_refused_naming_the_key() {
    let out = config_check(
        "[kafka]\nbrokers = [\"kafka.example\"]\ntopic = \"no spaces\"\nacks = \"1\"\nbatch_size = 0\nsecurity_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"kafka-pw-77\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for key in [
        "kafka.brokers: `kafka.example` is not `host:port`",
        "kafka.topic",
        "kafka.acks",
        "kafka.batch_size",
        "kafka.sasl: PLAIN over sasl_plaintext",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(!err.contains("kafka-pw-77"));
    let no_sasl = config_check(
        "[kafka]\nbrokers = [\"k:9092\"]\ntopic = \"t\"\nsecurity_protocol = \"sasl_ssl\"\n",
    );
    assert!(
        stderr(&no_sasl).contains("kafka.sasl: required"),
        "{}",
        stderr(&no_sasl)
    );
    let unknown =
        config_check("[kafka]\nbrokers = [\"k:9092\"]\ntopic = \"t\"\ncompression = \"snappy\"\n");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("compression"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_password_inside_the_endpoint_url_is_never_printed() {
    let out = config_check("[pega]\nendpoint = \"ftp://pega:pw-s3cret-9@pega.example/x\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("pega.endpoint"), "{err}");
    assert!(!err.contains("pw-s3cret-9"), "{err}");
    // Nor when it is valid and serve reports where it delivers.
    let out = crate::helpers::with_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n[pega]\nendpoint = \"https://pega:pw-s3cret-9@pega.example/x\"\n",
        &["config", "check"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pw-s3cret-9") && !stderr(&out).contains("pw-s3cret-9"));
}

#[test]
fn the_message_id_domain_defaults_to_the_senders_domain() {
    let out =
        config_check("[mail]\nhost = \"relay.example\"\nfrom = \"Offers <offers@mail.example>\"\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let settings = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pegabridge.toml");
        fs::write(
            &file,
            "[mail]\nhost = \"relay.example\"\nfrom = \"Offers <offers@mail.example>\"\n",
        )
        .unwrap();
        pegabridge::config::Settings::load(Some(&file)).unwrap()
    };
    assert_eq!(settings.mail.unwrap().message_id_domain, "mail.example");
}

#[test]
fn config_check_warns_about_an_http_tracking_url_and_a_missing_reply_to() {
    let out = config_check(
        "[mail]\nhost = \"relay.example\"\nfrom = \"offers@mail.example\"\n[tracking]\nbase_url = \"http://mail.example\"\nsecret = \"a tracking secret of more than 32 chars\"\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: tracking.base_url") && err.contains("one-click"),
        "{err}"
    );
    assert!(err.contains("warning: mail.reply_to is not set"), "{err}");
}
