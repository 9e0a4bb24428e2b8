//! `threatmail-fetcher`: the fetcher service as its own process.

fn main() -> std::process::ExitCode {
    threatmail_runtime::service_main("fetcher", threatmail_fetcher::run)
}
