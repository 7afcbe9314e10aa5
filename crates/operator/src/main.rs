//! Scaffolding until the operator lands.

fn main() -> std::process::ExitCode {
    eprintln!("virtual-cluster-operator is not implemented yet");
    std::process::ExitCode::FAILURE
}
