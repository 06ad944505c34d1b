use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mqttkit::cli::Cli::parse();
    mqttkit::cli::init_tracing(cli.verbose);
    match mqttkit::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line: the outermost context first, then its causes.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
