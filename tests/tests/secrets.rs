//! No configuration mistake makes the binary print a password: every mistake this test
//! can think of, each with the same distinctive password, through `check-config` and
//! `run` (the real binary, the real plugins), and every byte they print is searched for
//! it, raw and percent-encoded.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synchronizer_test_kit::paths::{binary, plugins_dir};
use synchronizer_test_kit::sys::free_port;

/// The password of every mistake; any part of it printed is a leak.
const MARK: &str = "Zq9SECRETpw";

/// A bus instance's table with `urls` as given.
fn bus(urls: &str) -> String {
    format!(
        "[[instances]]\nname = \"bus\"\nlibrary = \"libsynchronizer_bus.so\"\n[instances.config]\nurls = {urls}\nfamilies = [\"nova-versioned\"]\n[[instances.config.subscriptions]]\nexchange = \"nova\"\ntopics = [\"t\"]\n"
    )
}

/// A nova instance's table with `auth` lines as given.
fn nova(auth: &str) -> String {
    format!(
        "[[instances]]\nname = \"nova\"\nlibrary = \"libsynchronizer_nova.so\"\n[instances.config.cloud.auth]\n{auth}\n"
    )
}

/// One mistake: a name, the configuration's body, extra environment.
type Mistake = (&'static str, String, Vec<(String, String)>);

/// Every mistake.
fn mistakes() -> Vec<Mistake> {
    let closed = free_port();
    let p = MARK;
    vec![
        (
            "bus urls as a string, not a list",
            bus(&format!("\"amqp://guest:{p}@127.0.0.1:{closed}/\"")),
            vec![],
        ),
        (
            "bus password with an unencoded /",
            bus(&format!("[\"amqp://guest:a/{p}@127.0.0.1:{closed}/\"]")),
            vec![],
        ),
        (
            "bus password with unencoded ? and #",
            bus(&format!("[\"amqp://guest:{p}?#x@127.0.0.1:{closed}/\"]")),
            vec![],
        ),
        (
            "bus port out of range",
            bus(&format!("[\"amqp://guest:{p}@127.0.0.1:99999/\"]")),
            vec![],
        ),
        (
            "bus scheme that is not amqp",
            bus(&format!("[\"http://guest:{p}@127.0.0.1/\"]")),
            vec![],
        ),
        (
            "bus url list of numbers and strings",
            bus(&format!("[1, \"amqp://guest:{p}@h/\"]")),
            vec![],
        ),
        (
            "bus closed broker port (runs, cannot connect)",
            bus(&format!("[\"amqp://guest:{p}@127.0.0.1:{closed}/\"]")),
            vec![],
        ),
        (
            "unclosed quote (TOML syntax error on the password's line)",
            format!("[[outputs.amqp]]\nname = \"o\"\nurl = \"amqp://guest:{p}@127.0.0.1/\n"),
            vec![],
        ),
        (
            "output url as a list",
            format!("[[outputs.amqp]]\nname = \"o\"\nurl = [\"amqp://guest:{p}@127.0.0.1/\"]\n"),
            vec![],
        ),
        (
            "output as a table, not an array of tables",
            format!("[outputs.amqp]\nname = \"o\"\nurl = \"amqp://guest:{p}@127.0.0.1/\"\n"),
            vec![],
        ),
        (
            "output url with a bad port",
            format!(
                "[[outputs.amqp]]\nname = \"o\"\nurl = \"amqp://guest:{p}@127.0.0.1:70000/\"\n"
            ),
            vec![],
        ),
        (
            "output url with an unencoded @ in the password",
            format!(
                "[[outputs.amqp]]\nname = \"o\"\nurl = \"amqp://guest:a@{p}@127.0.0.1:{closed}/\"\n"
            ),
            vec![],
        ),
        (
            "nova password as a list",
            nova(&format!(
                "auth_url = \"http://127.0.0.1:{closed}/v3\"\nusername = \"u\"\npassword = [\"{p}\"]\nproject_name = \"admin\""
            )),
            vec![],
        ),
        (
            "nova password as a number-looking string in a table",
            nova(&format!(
                "auth_url = \"http://127.0.0.1:{closed}/v3\"\nusername = \"u\"\npassword = {{ value = \"{p}\" }}\nproject_name = \"admin\""
            )),
            vec![],
        ),
        (
            "nova auth_url with a password in it, as a list",
            nova(&format!(
                "auth_url = [\"http://u:{p}@127.0.0.1:{closed}/v3\"]\nusername = \"u\"\npassword = \"x\"\nproject_name = \"admin\""
            )),
            vec![],
        ),
        (
            "nova unknown field beside the password",
            nova(&format!(
                "auth_url = \"http://127.0.0.1:{closed}/v3\"\nusername = \"u\"\npasword = \"{p}\"\nproject_name = \"admin\""
            )),
            vec![],
        ),
        (
            "application credential secret of the wrong type",
            nova(&format!(
                "auth_url = \"http://127.0.0.1:{closed}/v3\"\napplication_credential_id = \"id\"\napplication_credential_secret = [\"{p}\"]"
            )),
            vec![],
        ),
        (
            "http listen set to a URL with a password, by the environment",
            String::new(),
            vec![(
                "SYNCHRONIZER_HTTP__LISTEN".into(),
                format!("http://u:{p}@127.0.0.1:1"),
            )],
        ),
        (
            "output url overridden by the environment with a bad port",
            "[[outputs.amqp]]\nname = \"o\"\nurl = \"amqp://127.0.0.1/\"\n".to_owned(),
            vec![(
                "SYNCHRONIZER_OUTPUTS__AMQP".into(),
                format!("[{{name=\"o\",url=\"amqp://u:{p}@h:99999/\"}}]"),
            )],
        ),
    ]
}

/// Runs `args` to its end (or SIGTERM after `run_for`) and returns all it printed.
fn output_of(args: &[&str], env: &[(String, String)], run_for: Duration) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn synchronizer");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + run_for;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    format!(
        "{}{}",
        reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default()
    )
}

#[test]
fn no_config_mistake_prints_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (i, (name, body, env)) in mistakes().into_iter().enumerate() {
        let file = dir.path().join(format!("mistake-{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "plugins_dir = {:?}\n{body}",
                plugins_dir().display().to_string()
            ),
        )
        .expect("write config");
        let path = file.display().to_string();
        let checked = output_of(&["check-config", &path], &env, Duration::from_secs(10));
        // Debug logs on: the run prints all it would under `--log debug`.
        let ran = output_of(
            &["--log", "debug", "run", "--config", &path],
            &env,
            Duration::from_millis(1500),
        );
        for (what, text) in [("check-config", &checked), ("run", &ran)] {
            if text.contains(MARK) || text.contains("Zq9SECRET") || text.contains("SECRETpw") {
                failures.push(format!("{name} ({what}):\n{text}"));
            }
            assert!(!text.is_empty(), "{name} ({what}) printed nothing");
        }
    }
    assert!(
        failures.is_empty(),
        "{} mistakes printed the password:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A plugin that repeats what it was given, in its errors and its logs, in process and
/// in a child: the host scrubs its table's secrets from both before they reach the log,
/// the status or the HTTP API.
#[test]
fn a_plugin_repeating_its_secrets_is_scrubbed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for isolation in ["in-process", "process"] {
        let port = free_port();
        let file = dir.path().join(format!("{isolation}.toml"));
        std::fs::write(
            &file,
            format!(
                "plugins_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[instances]]\nname = \"f\"\nlibrary = \"libsynchronizer_test_faulty.so\"\ninterval = \"100ms\"\njitter = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"100ms\"\nisolation = \"{isolation}\"\n[instances.config]\nmode = \"fail\"\nmessage = \"cannot reach amqp://u:{MARK}@h/\"\n",
                plugins_dir().display().to_string()
            ),
        )
        .expect("write config");
        let path = file.display().to_string();
        let status = std::thread::spawn(move || {
            // The status as the HTTP API shows it, once the instance has failed.
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(body) = http_get(port, "/v1/plugins")
                    && body.contains("cannot reach")
                {
                    return body;
                }
                assert!(Instant::now() < end, "no failure in /v1/plugins");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let ran = output_of(
            &["run", "--config", &path],
            &[],
            Duration::from_millis(2500),
        );
        let status = status.join().expect("status");
        for (what, text) in [("log", &ran), ("/v1/plugins", &status)] {
            assert!(
                text.contains("cannot reach amqp://u:***@h/"),
                "{isolation}: the {what} does not show the scrubbed error:\n{text}"
            );
            assert!(
                !text.contains(MARK),
                "{isolation}: the {what} shows the password:\n{text}"
            );
        }
        // The plugin's own log line, re-emitted by the host, is scrubbed too.
        assert!(ran.contains("failing: cannot reach"), "{isolation}:\n{ran}");
    }
}

/// A GET on the loopback port, the body as text.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::Write as _;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}
