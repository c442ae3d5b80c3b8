//! `delivery-app dashboard`: the live web page of a running application (see
//! [`delivery_app::dashboard`]), until Ctrl-C.

use delivery_app::connect::{AwsArgs, NameArgs};
use delivery_app::dashboard::{Dashboard, serve};
use tokio_util::sync::CancellationToken;

use super::{CommandError, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    /// Where to serve the page (loopback by default: the page shows the application's
    /// data to whoever can reach it). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
}

pub async fn run(args: DashboardArgs) -> Result<(), CommandError> {
    let clients = args
        .aws
        .clients(Some(&args.names.stream), Some(&args.names.app))
        .await?;
    let dashboard = Dashboard::new(&clients, &args.names.stream, &args.names.app);
    let cancel = CancellationToken::new();
    let bound = serve(dashboard, args.addr, cancel.clone()).await?;
    println!("dashboard at http://{bound}/ (Ctrl-C to stop)");
    shutdown_signal().await;
    cancel.cancel();
    Ok(())
}
