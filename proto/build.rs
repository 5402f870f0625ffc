//! Compiles `proto/opi/v1/*.proto` and our subset of etcd's API (`proto/etcd/kv.proto`) with
//! protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/opi/v1/fleet.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(descriptors)?;

    // Only the client side of etcd's API: the manager calls etcd, it never serves it.
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
