//! Command-line conventions, driven through the real binary: completions, the
//! man page, the global `--out`, durations and sizes with units, colour only
//! on a terminal, `--json` on `broker up`/`broker logs`/`quickstart`, and a
//! foreign compose.yaml that `--runtime native` leaves alone.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, ok, run, stderr, stdout, Broker, BrokerOptions};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `sh -c script` with mqttkit as `$MQTTKIT`.
fn shell(script: &str) -> std::process::Output {
    run(
        Command::new("sh")
            .args(["-c", script])
            .env("MQTTKIT", bin())
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"),
        LIMIT,
    )
}

#[test]
fn completion_scripts_parse_and_the_man_page_renders() {
    let o = ok(&shell(r#"set -e; "$MQTTKIT" completions bash | bash -n"#)).clone();
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    for shell_name in ["zsh", "fish", "powershell"] {
        // Through a pipe reader: a script is larger than a pipe's buffer.
        let o = ok(&shell(&format!(
            r#"set -e; "$MQTTKIT" completions {shell_name} | grep -c mqttkit"#
        )))
        .clone();
        assert!(
            stdout(&o).trim().parse::<u32>().unwrap() > 0,
            "{shell_name}"
        );
    }
    let o = ok(&shell(r#"set -e; "$MQTTKIT" man | man -l -"#)).clone();
    let page = stdout(&o);
    assert!(page.contains("NAME"), "{page}");
    assert!(page.contains("quickstart"), "{page}");
    let bad = run(Command::new(bin()).args(["completions", "tcsh"]), LIMIT);
    assert!(!bad.status.success());
}

#[test]
fn out_works_before_and_after_the_subcommand_and_from_the_env() {
    let dir = tempfile::tempdir().unwrap();
    let mq = || {
        let mut c = Command::new(bin());
        c.current_dir(dir.path()).env_remove("MQTTKIT_OUT");
        c
    };
    ok(&run(mq().args(["--out", "o1", "pki", "init"]), LIMIT));
    assert!(dir.path().join("o1/certs/ca.crt").exists());
    let before = ok(&run(
        mq().args(["--out", "o1", "pki", "list", "--json"]),
        LIMIT,
    ))
    .clone();
    let after = ok(&run(
        mq().args(["pki", "list", "--json", "--out", "o1"]),
        LIMIT,
    ))
    .clone();
    let env = ok(&run(
        mq().env("MQTTKIT_OUT", "o1")
            .args(["pki", "list", "--json"]),
        LIMIT,
    ))
    .clone();
    assert_eq!(stdout(&before), stdout(&after));
    assert_eq!(stdout(&before), stdout(&env));
    assert!(stdout(&before).contains("ca.crt"));
    // The default is still ./out, which does not exist here.
    let none = run(mq().args(["pki", "list"]), LIMIT);
    assert!(!none.status.success());
    assert!(stderr(&none).contains("out/certs"), "{}", stderr(&none));
}

#[test]
fn durations_and_sizes_take_units_and_bare_numbers_stay_seconds() {
    let b = Broker::start();
    let o = ok(&run(
        b.mqttkit().args([
            "bench",
            "--devices",
            "2",
            "--duration",
            "1s",
            "--rate",
            "20",
            "--payload",
            "1KiB",
            "--drain-idle",
            "500ms",
            "--json",
        ]),
        LIMIT,
    ))
    .clone();
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench json");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["published"].as_u64().unwrap() > 0, "{report}");

    let o = ok(&run(
        b.mqttkit().args([
            "pub",
            "telemetry",
            "--count",
            "3",
            "--reconnect-timeout",
            "30s",
            "--keepalive",
            "1m",
        ]),
        LIMIT,
    ))
    .clone();
    assert!(stderr(&o).contains("acked 3"), "{}", stderr(&o));
    ok(&run(
        b.mqttkit().args([
            "pub",
            "telemetry",
            "--count",
            "1",
            "--reconnect-timeout",
            "30",
        ]),
        LIMIT,
    ));

    let bad = run(b.mqttkit().args(["doctor", "--timeout", "soon"]), LIMIT);
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert!(err.contains("--timeout") && err.contains("'soon'"), "{err}");
    let bad = run(b.mqttkit().args(["bench", "--payload", "1GiB"]), LIMIT);
    assert!(stderr(&bad).contains("out of range"), "{}", stderr(&bad));
}

#[test]
fn logs_have_no_colour_in_a_pipe_or_with_no_color() {
    let b = Broker::start();
    let o = ok(&run(
        b.mqttkit()
            .args(["-vv", "pub", "telemetry", "--count", "1"]),
        LIMIT,
    ))
    .clone();
    let err = stderr(&o);
    assert!(err.contains("INFO"), "no log lines to check: {err}");
    assert!(!err.contains('\x1b'), "ANSI escapes in a pipe: {err:?}");

    // On a terminal (`script`) logs are coloured, unless NO_COLOR is set.
    let cmd = format!("{} -vv pub telemetry --count 1", bin());
    let on_tty = |no_color: bool| {
        let mut c = Command::new("script");
        c.current_dir(b.path())
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("MQTTKIT_OUT")
            .env_remove("MQTTKIT_PROFILE")
            .env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        stdout(ok(&run(&mut c, LIMIT)))
    };
    assert!(on_tty(false).contains('\x1b'), "no colour on a terminal");
    let plain = on_tty(true);
    assert!(plain.contains("INFO"), "{plain}");
    assert!(!plain.contains("\x1b[3"), "colour with NO_COLOR: {plain:?}");
}

#[test]
fn broker_up_json_ignores_a_foreign_compose_file_with_the_native_runtime() {
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let foreign = "services:\n  app:\n    image: example\n";
    std::fs::write(b.path().join("compose.yaml"), foreign).unwrap();
    let mut c = b.mqttkit();
    c.args(["broker", "up", "--json"]).args(&b.up_args);
    let o = ok(&run(&mut c, LIMIT)).clone();
    let _down = Down(&b);
    let up: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("up json");
    assert_eq!(up["runtime"], "native", "{up}");
    assert_eq!(up["port"], b.port, "{up}");
    assert!(up["pid"].as_i64().unwrap() > 0, "{up}");
    assert!(up["compose"].is_null(), "{up}");
    assert_eq!(
        std::fs::read_to_string(b.path().join("compose.yaml")).unwrap(),
        foreign
    );
}

/// Stops the broker of a test that started it by hand.
struct Down<'a>(&'a Broker);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(self.0.mqttkit().args(["broker", "down"]), LIMIT);
    }
}

#[test]
fn broker_logs_leave_out_autosave_notices_and_speak_json() {
    let b = Broker::start();
    ok(&run(
        b.mqttkit().args(["pub", "telemetry", "--count", "1"]),
        LIMIT,
    ));
    // mosquitto autosaves every 10 s (templates/mosquitto.conf).
    let log = b.out().join("mosquitto/mosquitto.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Saving in-memory database")
    {
        assert!(std::time::Instant::now() < deadline, "no autosave logged");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = stdout(ok(&run(
        b.mqttkit().args(["broker", "logs", "-n", "3"]),
        LIMIT,
    )));
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!text.contains("Saving in-memory"), "{text}");
    assert!(text.contains("device-001"), "{text}");

    let json = stdout(ok(&run(
        b.mqttkit().args(["broker", "logs", "--json"]),
        LIMIT,
    )));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert!(lines.len() >= 3, "{json}");
    assert!(lines.iter().all(|l| l["line"].is_string()), "{json}");
    assert!(
        lines[0]["time"].as_str().is_some_and(|t| t.len() == 19),
        "{json}"
    );
    assert!(lines.iter().any(|l| l["line"]
        .as_str()
        .is_some_and(|t| t.starts_with("mosquitto version"))));
}

#[test]
fn quickstart_json_is_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let mut c = Command::new(bin());
    c.current_dir(dir.path())
        .env_remove("MQTTKIT_OUT")
        .args(["quickstart", "--runtime", "native", "--bind", "127.0.0.1"])
        .args(["--port", &port, "--messages", "2", "--json"])
        .stdin(Stdio::null());
    let o = run(&mut c, Duration::from_secs(90));
    let _ = run(
        Command::new(bin())
            .current_dir(dir.path())
            .args(["broker", "down"]),
        LIMIT,
    );
    ok(&o);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.iter().any(|l| l["written"].is_array()), "{lines:?}");
    assert!(lines.iter().any(|l| l["runtime"] == "native"), "{lines:?}");
    let telemetry = lines.iter().filter(|l| l["telemetry"].is_object()).count();
    assert_eq!(telemetry, 2, "{lines:?}");
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["telemetry"], 2, "{done}");
}
