//! `threatmail-token-broker`: the token broker service as its own process.

fn main() -> std::process::ExitCode {
    threatmail_runtime::service_main("token-broker", threatmail_token_broker::run)
}
