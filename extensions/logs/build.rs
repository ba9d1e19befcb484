//! Generates the Loggregator v2 gRPC code from `proto/` with protox (pure Rust: no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/loggregator/v2/envelope.proto",
        "proto/loggregator/v2/ingress.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".loggregator.v2.Log.payload")
        .compile_fds(fds)?;
    Ok(())
}
