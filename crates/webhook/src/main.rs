//! Scaffolding until the webhook lands.

fn main() -> std::process::ExitCode {
    eprintln!("plugin-webhook is not implemented yet");
    std::process::ExitCode::FAILURE
}
