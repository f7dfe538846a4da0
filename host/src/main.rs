//! The `synchronizer` command: a thin shell over the library.
//!
//! - `run --config FILE`: runs the service; change notifications go to stdout as JSON
//!   lines (schema in `synchronizer::output`), logs to stderr.
//! - `plugins --config FILE`: lists the plugin files and what they provide, or why one
//!   cannot load.
//! - `snapshot --config FILE --types T,...`: one fresh get-all, as JSON lines.
//! - `check-config FILE`: validates the file and every instance's own configuration
//!   without running anything.
//! - `plugin-child` (hidden, internal): serves one plugin instance for a host over
//!   stdin/stdout; the host starts it for `isolation = "process"` instances.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or plugins.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use synchronizer::config::ConfigError;
use synchronizer::config_location::locate;
use synchronizer::instance::PluginInstance;
use synchronizer::loader::{host_api_version, load};
use synchronizer::{Config, SubscribeOptions, Synchronizer, output};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "synchronizer",
    version,
    about = "Keeps a current view of a cloud through plugins and reports what changed"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service, printing change notifications as JSON lines.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only print changes of these types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Send a full snapshot of the types every this often (e.g. 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        resync_every: Option<std::time::Duration>,
    },
    /// List the plugin files and instances, with what they provide or why they fail.
    Plugins {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print this plugin's sample `[[instances]]` table (a plugin name or a library
        /// file name in the plugins directory) and nothing else.
        #[arg(long, value_name = "NAME")]
        sample: Option<String>,
    },
    /// Collect once and print the entities as JSON lines.
    Snapshot {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Entity types (comma-separated); all when absent.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
    },
    /// Validate a configuration file, plugin configurations included.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Internal: serve one plugin instance for a host over stdin/stdout (process mode).
    #[command(hide = true)]
    PluginChild {
        /// The host's pid: the child exits at once if its parent is another process.
        #[arg(long)]
        parent_pid: Option<u32>,
    },
}

/// An error that means "the configuration or plugins are wrong" (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

/// `snapshot` printed what it got, but some types came back incomplete (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error("the snapshot is incomplete (the entities printed are partial): {0}")]
struct Partial(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PluginChild { parent_pid } = cli.command {
        // Its own logging (JSON lines on stderr) and runtime; exits by itself.
        return match synchronizer::isolation::child::main(parent_pid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: plugin child: {e}");
                ExitCode::from(1)
            }
        };
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Plugins may own threads stuck in blocking code: never wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<Invalid>().is_some() {
                2
            } else if e.downcast_ref::<Partial>().is_some() {
                3
            } else {
                1
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            types,
            resync_every,
        } => run(&config, types, resync_every).await,
        Command::Plugins { config, sample } => match sample {
            Some(name) => print_sample(&config, &name),
            None => plugins(&config),
        },
        Command::Snapshot { config, types } => snapshot(&config, types).await,
        Command::CheckConfig { file } => check_config(&file),
        Command::PluginChild { .. } => Ok(()),
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| match e {
        ConfigError::Missing(_) => anyhow::Error::new(Invalid(e.to_string())),
        other => anyhow::Error::new(Invalid(format!("{}: {other}", path.display()))),
    })
}

fn start_error(e: synchronizer::StartError) -> anyhow::Error {
    match e {
        synchronizer::StartError::Plugins(_)
        | synchronizer::StartError::Config(_)
        | synchronizer::StartError::Store(_) => anyhow::Error::new(Invalid(e.to_string())),
    }
}

async fn start(config: Config) -> Result<Synchronizer> {
    Synchronizer::start(config).await.map_err(start_error)
}

/// Runs the service until SIGTERM or SIGINT, then stops without losing a change:
///
/// 1. the producers stop (bus plugins stop consuming and settle what they hold), while
///    stdout and the HTTP API keep taking changes;
/// 2. every change accepted before that reaches every consumer that was subscribed:
///    `Synchronizer::shutdown` returns once callbacks and SSE streams took theirs, and
///    stdout's subscription ends once every change queued for it is written;
/// 3. the stdout writer flushes and ends, then the HTTP API closes.
async fn run(
    path: &Path,
    types: Vec<String>,
    resync_every: Option<std::time::Duration>,
) -> Result<()> {
    let config = load_config(path)?;
    let queue = config.subscriber_queue;
    let http = config.http.clone();
    // Installed before anything runs: a signal during the start stops gracefully too.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // Subscribed before any instance runs: stdout sees the first snapshots too.
    let options = SubscribeOptions {
        types,
        queue,
        initial_snapshot: false,
        resync_every,
    };
    let (sync, sub) = Synchronizer::start_subscribed(config, &options)
        .await
        .map_err(start_error)?;
    let sync = Arc::new(sync);
    let stop_http = CancellationToken::new();
    let http_task = match http {
        Some(http) => {
            // Bound before READY=1: a port that is taken stops the start, loudly.
            let listen = http.listen;
            let listener = match synchronizer::http::bind(&http) {
                Ok(l) => l,
                Err(e) => {
                    sync.shutdown().await;
                    return Err(anyhow::Error::new(e).context("HTTP API"));
                }
            };
            let task = tokio::spawn(synchronizer::http::serve_on(
                listener,
                sync.clone(),
                http,
                stop_http.clone(),
            ));
            tracing::info!(%listen, "HTTP API enabled");
            Some(task)
        }
        None => None,
    };
    notify_systemd("READY=1");
    for f in sync.failures() {
        tracing::error!(error = %f, "instance skipped");
    }
    // stdout's own thread reads the subscription and writes: one hand-off per change,
    // from the hub's delivery straight to the thread that writes it.
    let (writer, mut written) = stdout_writer(sub)?;
    // The host's shutdown runs beside the loop below, while the writer keeps writing
    // what it is delivered until the subscription ends after the drain.
    let mut stopping: Option<tokio::task::JoinHandle<()>> = None;
    let mut stopped = false;
    let mut shutdown_failed = false;
    loop {
        tokio::select! {
            s = &mut signal, if stopping.is_none() => {
                tracing::info!(signal = s, "shutting down");
                notify_systemd("STOPPING=1");
                let sync = sync.clone();
                stopping = Some(tokio::spawn(async move { sync.shutdown().await }));
            }
            done = async {
                match stopping.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if !stopped => {
                stopped = true;
                // Normally the subscription ends next; without a drain it never would.
                if let Err(e) = done {
                    tracing::error!(error = %e, "shutdown task failed");
                    shutdown_failed = true;
                    break;
                }
            }
            _ = &mut written => {
                // The subscription ended (after the drain), or stdout failed.
                if stopping.is_none() {
                    tracing::error!("stdout closed; stopping");
                }
                break;
            }
        }
    }
    match stopping {
        Some(task) if !stopped => {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "shutdown task failed");
            }
        }
        Some(_) => {}
        None => {
            notify_systemd("STOPPING=1");
            sync.shutdown().await;
        }
    }
    if shutdown_failed {
        // No drain will end the subscription: the writer is left to the process's exit.
        anyhow::bail!("the shutdown failed; changes queued for stdout may be lost");
    }
    // The subscription has ended (or ends now, after the drain): the writer flushes and
    // ends.
    let written = tokio::task::spawn_blocking(move || writer.join()).await;
    // Last, the HTTP API (its change streams have ended after the drain).
    stop_http.cancel();
    if let Some(task) = http_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP API failed"),
            Err(e) => tracing::error!(error = %e, "HTTP API task failed"),
            Ok(Ok(())) => {}
        }
    }
    match written {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Ok(Ok(Err(e))) => Err(e).context("writing to stdout"),
        Ok(Err(_)) | Err(_) => anyhow::bail!("the stdout writer panicked"),
    }
}

type StdoutWriter = std::thread::JoinHandle<std::io::Result<()>>;

/// The thread that reads `sub` and writes its events to stdout, so that a slow pipe
/// delays only this subscriber (the hub marks it lagged and resyncs it; see
/// `synchronizer::hub`). It writes until the subscription ends or stdout fails, flushing
/// whenever nothing else is queued, so a reader sees each change at once without a
/// write per change under load. The receiver completes when it has ended.
fn stdout_writer(
    mut sub: synchronizer::Subscription,
) -> Result<(StdoutWriter, tokio::sync::oneshot::Receiver<()>)> {
    let (done, ended) = tokio::sync::oneshot::channel();
    let writer = std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || -> std::io::Result<()> {
            let stdout = std::io::stdout();
            widen_pipe(&stdout);
            let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
            let result = (|| {
                while let Some(event) = sub.blocking_recv() {
                    output::write_event(&mut out, &event)?;
                    while let Some(event) = sub.try_recv() {
                        output::write_event(&mut out, &event)?;
                    }
                    out.flush()?;
                }
                out.flush()
            })();
            // Unsubscribed before the main task hears of it.
            drop(sub);
            let _ = done.send(());
            result
        })
        .context("cannot start the stdout writer")?;
    Ok((writer, ended))
}

/// When stdout is a pipe, asks for a 1 MiB pipe buffer (Linux's default is 64 KiB, less
/// than one batch of changes): the writer then seldom waits for the reader, and the
/// reader is woken less often, under a burst of changes. Nothing changes if the kernel
/// refuses (more than `/proc/sys/fs/pipe-max-size`, a limit the user reached).
fn widen_pipe(stdout: &std::io::Stdout) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let fd = stdout.as_raw_fd();
        // SAFETY: fstat and fcntl only read and set the state of the descriptor, which
        // stays open for the process's life; `stat` is written by fstat before use.
        unsafe {
            let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
            if libc::fstat(fd, stat.as_mut_ptr()) == 0
                && stat.assume_init().st_mode & libc::S_IFMT == libc::S_IFIFO
                && libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) < 0
            {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "stdout's pipe keeps its size"
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stdout;
}

/// Tells systemd (Type=notify) about the service's state, when run under it.
fn notify_systemd(state: &str) {
    #[cfg(unix)]
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let socket = match std::os::unix::net::UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot notify systemd");
                return;
            }
        };
        let bytes = path.as_encoded_bytes();
        let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        } else {
            socket.send_to(state.as_bytes(), std::path::Path::new(&path))
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "cannot handle the signal");
                None
            }
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM");
        let mut int = install(SignalKind::interrupt(), "SIGINT");
        async move {
            let term = async {
                match &mut term {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match &mut int {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => "SIGTERM",
                _ = int => "SIGINT",
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

async fn snapshot(path: &Path, types: Vec<String>) -> Result<()> {
    let config = load_config(path)?;
    // Each instance is collected once: its schedule's first collection serves.
    let since = std::time::Instant::now();
    let sync = start(config).await?;
    let result = sync.get_all_report_since(&types, Some(since)).await;
    sync.shutdown().await;
    let report = result.context("snapshot failed")?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for e in &report.entities {
        writeln!(out, "{}", output::entity_to_json(e))?;
    }
    out.flush()?;
    if report.incomplete.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = report
        .incomplete
        .iter()
        .map(|i| format!("{} from `{}`: {}", i.entity_type, i.instance, i.reason))
        .collect();
    Err(Partial(what.join("; ")).into())
}

/// The plugin files `plugins` looks at: every `.so` in the plugins directory and every
/// instance's library.
fn plugin_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&config.plugins_dir) {
        for entry in rd.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "so") {
                files.push(p);
            }
        }
    }
    for inst in &config.instances {
        let p = config.library_path(inst);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    files
}

/// `plugins --sample NAME`: the sample table of the plugin named NAME (or in the file
/// NAME), as the plugin carries it.
fn print_sample(path: &Path, name: &str) -> Result<()> {
    let config = load_config(path)?;
    let mut found = None;
    for file in plugin_files(&config) {
        let by_file = file.file_name().is_some_and(|f| f == name);
        match load(&file) {
            Ok(lib) if by_file || lib.meta.name == name => {
                found = Some(lib);
                break;
            }
            Err(e) if by_file => return Err(Invalid(e.to_string()).into()),
            _ => {}
        }
    }
    let Some(lib) = found else {
        return Err(Invalid(format!(
            "no plugin named `{name}` in {} (nor among the instances' libraries); `synchronizer plugins --config {}` lists them",
            config.plugins_dir.display(),
            path.display()
        ))
        .into());
    };
    match lib.sample_config.as_deref() {
        Some(sample) if !sample.trim().is_empty() => {
            print!("{sample}");
            if !sample.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Some(_) => Err(anyhow::anyhow!(
            "plugin `{}` ({}) carries no sample configuration; see its README",
            lib.meta.name,
            lib.path.display()
        )),
        None => Err(anyhow::anyhow!(
            "plugin `{}` ({}) was built against plugin-api {}, which predates sample configurations (0.1.1); see its README",
            lib.meta.name,
            lib.path.display(),
            lib.meta.api_version
        )),
    }
}

fn plugins(path: &Path) -> Result<()> {
    let config = load_config(path)?;
    let files = plugin_files(&config);
    println!("host plugin-api {}", host_api_version());
    println!("plugins directory {}", config.plugins_dir.display());
    let mut bad = 0;
    for file in &files {
        let users: Vec<String> = config
            .instances
            .iter()
            .filter(|i| &config.library_path(i) == file)
            .map(describe_instance)
            .collect();
        match load(file) {
            Ok(lib) => {
                let m = &lib.meta;
                let types = if m.entity_types.is_empty() {
                    "(any type)".to_owned()
                } else {
                    m.entity_types.join(", ")
                };
                let sample = match lib.sample_config.as_deref() {
                    Some(s) if !s.trim().is_empty() => format!(
                        "synchronizer plugins --config {} --sample {}",
                        path.display(),
                        m.name
                    ),
                    Some(_) => "(none)".to_owned(),
                    None => format!("(none: plugin-api {} has no samples)", m.api_version),
                };
                println!(
                    "\n{}\n  plugin {} {} ({}), plugin-api {}\n  {}\n  types: {}\n  sample config: {sample}\n  instances: {}",
                    file.display(),
                    m.name,
                    m.version,
                    m.kind.as_str(),
                    m.api_version,
                    m.description,
                    types,
                    if users.is_empty() {
                        "(none)".to_owned()
                    } else {
                        users.join(", ")
                    }
                );
            }
            Err(e) => {
                if !users.is_empty() {
                    bad += 1;
                }
                println!(
                    "\n{}\n  cannot load: {e}\n  instances: {}",
                    file.display(),
                    if users.is_empty() {
                        "(none)".to_owned()
                    } else {
                        users.join(", ")
                    }
                );
            }
        }
    }
    // The files say what can run; a running host says how its instances are doing.
    match &config.http {
        Some(http) => match running_instances(http) {
            Ok(lines) => {
                println!("\nrunning host on {}:", http.listen);
                for line in lines {
                    println!("  {line}");
                }
            }
            Err(e) => println!("\nno running host answers on {}: {e}", http.listen),
        },
        None => println!(
            "\n(configure [http] to see here how a running host's instances are doing, from its GET /v1/plugins: health, and each process-mode child's pid, restarts and last exit cause)"
        ),
    }
    if bad > 0 {
        return Err(Invalid(format!("{bad} configured plugin file(s) cannot be loaded")).into());
    }
    Ok(())
}

/// Asks a running host (its HTTP API) how its instances are doing: one line each with its
/// health and why when it is not healthy (a bus not connected: its plugin's report), and
/// for a process-mode instance its child's pid, restarts and last exit cause.
fn running_instances(http: &synchronizer::config::HttpConfig) -> Result<Vec<String>> {
    use std::io::Read as _;
    let token = match (&http.token_file, &http.token_env) {
        (Some(file), _) => std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned())),
        (None, Some(var)) => std::env::var(var).ok().map(|t| t.trim().to_owned()),
        (None, None) => None,
    };
    let timeout = std::time::Duration::from_secs(2);
    let mut conn = std::net::TcpStream::connect_timeout(&http.listen, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "GET /v1/plugins HTTP/1.0\r\nHost: {}\r\n{auth}\r\n",
        http.listen
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer is not HTTP")?;
    let ok = head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200");
    if !ok {
        anyhow::bail!("{}", head.lines().next().unwrap_or("no status line"));
    }
    let doc: serde_json::Value = serde_json::from_str(body).context("the answer is not JSON")?;
    let mut lines = Vec::new();
    for inst in doc["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let status = &inst["status"];
        let health = status["health"].as_str().unwrap_or("?");
        let mut line = format!("{}: {health}", inst["name"].as_str().unwrap_or("?"));
        let reason = match health {
            "degraded" => status["plugin_report"]["message"].as_str(),
            "failing" | "stuck" => status["last_error"].as_str(),
            _ => None,
        };
        if let Some(reason) = reason.filter(|r| !r.is_empty()) {
            line.push_str(&format!(" ({reason})"));
        }
        if status["isolation"] == "process" {
            line.push_str(&format!(
                "; child pid {}, restarts {}, last exit {}",
                status["pid"]
                    .as_u64()
                    .map_or("-".to_owned(), |p| p.to_string()),
                status["restarts"].as_u64().unwrap_or(0),
                status["last_exit"].as_str().unwrap_or("-"),
            ));
        }
        lines.push(line);
    }
    Ok(lines)
}

/// `name (in-process)`, `name (process, memory limit 512MiB)`, `name (disabled, ...)`.
fn describe_instance(i: &synchronizer::config::InstanceConfig) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !i.enabled {
        parts.push("disabled".into());
    }
    parts.push(i.isolation.as_str().into());
    if let Some(limit) = i.memory_limit {
        parts.push(format!("memory limit {limit}"));
    }
    format!("{} ({})", i.name, parts.join(", "))
}

/// Checks the file and, through the real loader, every instance's own table: each plugin
/// parses its table and runs its own validation (`Plugin::validate`). Each problem is
/// one line, `FILE:LINE:COLUMN: instance `NAME`: field `PATH`: what is wrong`, the
/// position that of the field in the file as written (config_location).
fn check_config(path: &Path) -> Result<()> {
    let config = load_config(path)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut errors = Vec::new();
    for inst in &config.instances {
        let file = config.library_path(inst);
        let problem = match load(&file) {
            Ok(lib) => match PluginInstance::check_config(&lib, &inst.name, &inst.config) {
                Ok(()) => continue,
                Err(problem) => {
                    let secrets = synchronizer::secrets::of_json(&inst.config);
                    let at = locate(&text, &inst.name, problem.field.as_deref());
                    let place = at.map_or(String::new(), |l| format!(":{l}"));
                    format!(
                        "{}{place}: instance `{}`: {}",
                        path.display(),
                        inst.name,
                        secrets.scrub(&problem.to_string())
                    )
                }
            },
            Err(e) => {
                let place =
                    locate(&text, &inst.name, None).map_or(String::new(), |l| format!(":{l}"));
                format!("{}{place}: instance `{}`: {e}", path.display(), inst.name)
            }
        };
        errors.push(problem);
    }
    if errors.is_empty() {
        println!(
            "{}: valid ({} instance(s))",
            path.display(),
            config.instances.len()
        );
        Ok(())
    } else {
        Err(Invalid(format!(
            "{} problem(s) in {}:\n  {}",
            errors.len(),
            path.display(),
            errors.join("\n  ")
        ))
        .into())
    }
}
