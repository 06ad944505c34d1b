use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mqttkit::cli::Cli::parse();
    mqttkit::cli::init_tracing(cli.verbosity());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mqttkit::cli::run(cli)) {
        Ok(code) => code,
        // `mqttkit ... | head`: a closed pipe ends the output, not an error.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // One line: the outermost context first, then its causes.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
