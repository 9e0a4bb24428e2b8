//! `threatmail-registry`: the registry service as its own process.

fn main() -> std::process::ExitCode {
    threatmail_runtime::service_main("registry", threatmail_registry::run)
}
