//! TEMPORARY interface stub; replaced by the real simulator from the backend branch.
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    #[arg(long = "listen", default_value = "127.0.0.1:9001")]
    pub listen: Vec<SocketAddr>,
    #[arg(long, default_value_t = 32)]
    pub capacity: u32,
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub latency: Duration,
    #[arg(long)]
    pub crash_above: Option<u32>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub down_for: Duration,
}
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    pub capacity: u32,
    pub latency: Duration,
    pub crash_above: Option<u32>,
    pub down_for: Duration,
}
pub struct SimServer;
impl SimServer {
    pub async fn start(_addr: SocketAddr, _opts: BackendOptions) -> std::io::Result<SimServer> {
        Err(std::io::Error::other("stub"))
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}
pub async fn run(_args: BackendArgs) -> std::io::Result<()> {
    Ok(())
}
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
