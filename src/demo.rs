//! `levee demo`: three simulated backends and levee in front of them, in one process, with a
//! built-in safe config and the admin listener.

use crate::backend::{BackendOptions, SimServer};
use crate::config::Config;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `levee demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where clients connect
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The admin listener (status, metrics, reload)
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// How many simulated backends to start (1 to 16)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub backends: u16,
    /// Print the config the demo uses and exit (a starting point for your own)
    #[arg(long)]
    pub print_config: bool,
}

/// The simulated servers' behaviour: 32 requests at full speed, crash above 64 at once.
pub fn demo_backend_options() -> BackendOptions {
    BackendOptions {
        capacity: 32,
        latency: Duration::from_millis(20),
        crash_above: Some(64),
        down_for: Duration::from_secs(10),
    }
}

/// The demo's config for these addresses.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    servers: &[SocketAddr],
    journal: &str,
) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"# levee demo config: a safe starting point.
[listener]
bind = "{listen}"
client_header_timeout = "10s"   # slowloris defence
idle_timeout = "60s"
max_body_size = "64MiB"

[admin]
bind = "{admin}"                # loopback only

[shield]
mode = "enforce"
rate = 50                       # requests/s per client, with a burst of 100
burst = 100
# Your own machine may hammer the demo without being banned; try a flood from other
# loopback addresses (127.0.0.0/8 minus 127.0.0.1) to see the shield ban them.
allow = ["127.0.0.1"]

[access_log]
enabled = true
format = "json"
path = "stdout"

[journal]
path = {journal:?}             # incidents and postmortem drafts: levee postmortem --journal FILE

[pools.web]
servers = [{servers}]
algorithm = "least_request"
# Each simulated server works well up to 32 concurrent requests and crashes above 64:
# levee never sends one more than 24.
max_concurrency = 24
queue_size = 128
queue_timeout = "1s"
connect_timeout = "1s"
response_header_timeout = "10s"
request_timeout = "15s"

[pools.web.health_check]
path = "/health"
interval = "2s"
timeout = "1s"
rise = 2
fall = 2

[pools.web.outlier]
consecutive_failures = 5
base_ejection_time = "10s"

[pools.web.retry]
attempts = 2
budget_ratio = 0.2
"#,
        servers = list.join(", ")
    )
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let n = usize::from(a.backends);
    if a.print_config {
        let servers: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9001 + i as u16)))
            .collect();
        print!(
            "{}",
            demo_config(a.listen, a.admin, &servers, "levee-journal.db")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut sims = Vec::new();
    for i in 0..n {
        // Ports 9001.. when free, any free port otherwise.
        let preferred = SocketAddr::from(([127, 0, 0, 1], 9001 + i as u16));
        let sim = match SimServer::start(preferred, demo_backend_options()).await {
            Ok(s) => s,
            Err(_) => {
                SimServer::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    demo_backend_options(),
                )
                .await?
            }
        };
        sims.push(sim);
    }
    let addrs: Vec<SocketAddr> = sims.iter().map(SimServer::addr).collect();
    let journal =
        std::env::temp_dir().join(format!("levee-demo-journal-{}.db", std::process::id()));
    let text = demo_config(a.listen, a.admin, &addrs, &journal.display().to_string());
    let cfg = match Config::parse(&text, "<demo>", None) {
        Ok(c) => c,
        Err(e) => {
            eprint!("levee demo: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let signals = crate::cli::Signals::install()?;
    let levee = match crate::proxy::Levee::start(cfg).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("levee demo: {e} (pick other addresses with --listen and --admin)");
            return Ok(ExitCode::from(2));
        }
    };
    let (url, admin) = (
        format!("http://{}", levee.addr),
        format!("http://{}", levee.admin_addr),
    );
    let servers: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    eprintln!(
        r#"
levee demo is running.

  levee     {url}/
  dashboard {admin}/
  admin     {admin}/api/status   {admin}/metrics
  backends  {servers} (simulated: fine up to 32 concurrent requests each, crash above 64)
  config    levee demo --print-config
  journal   {journal}  (after an incident: levee postmortem --journal {journal} --last)

Three things to try:
  1. A request:      curl -i {url}/
  2. A load test:    for i in $(seq 300); do curl -s -o /dev/null -w '%{{http_code}}\n' {url}/?sleep=1s & done | sort | uniq -c
                     (levee keeps each backend at 24 in flight and sheds the rest with 503 + Retry-After)
  3. Admin status:   curl -s {admin}/api/status

Access log lines follow on stdout. Ctrl-C stops (in-flight requests finish first).
"#,
        servers = servers.join(", "),
        journal = journal.display()
    );
    let code = crate::cli::run_until_signal(levee, signals).await;
    drop(sims);
    code
}
