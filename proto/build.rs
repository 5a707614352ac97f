//! Compiles `proto/ward/v1/*.proto` with protox (pure Rust), so a fresh
//! machine needs no `protoc` binary, and writes `bounds.rs`: one schema table
//! per message (which fields are messages, which are repeated, with their
//! caps) for the wire walker that runs before prost (`src/bounded.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[allow(dead_code)] // the walker's constants are unused here
mod caps {
    include!("src/caps.rs");
}

// FieldDescriptorProto numbers (descriptor.proto).
const LABEL_REPEATED: i32 = 3;
const TYPE_MESSAGE: i32 = 11;
const TYPE_GROUP: i32 = 10;
const TYPE_STRING: i32 = 9;
const TYPE_BYTES: i32 = 12;
const TYPE_DOUBLE: i32 = 1;
const TYPE_FIXED64: i32 = 6;
const TYPE_SFIXED64: i32 = 16;
const TYPE_FLOAT: i32 = 2;
const TYPE_FIXED32: i32 = 7;
const TYPE_SFIXED32: i32 = 15;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ward/v1/identity.proto",
        "proto/ward/v1/envelope.proto",
        "proto/ward/v1/auth.proto",
        "proto/ward/v1/relay.proto",
        "proto/ward/v1/keyserver.proto",
        "proto/ward/v1/room.proto",
        "proto/ward/v1/attachment.proto",
        "proto/ward/v1/blob.proto",
        "proto/ward/v1/link.proto",
        "proto/ward/v1/kt.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let bounds = bounds(&fds)?;
    let out = std::env::var("OUT_DIR")?;
    std::fs::write(format!("{out}/bounds.rs"), bounds)?;
    prost_build::Config::new()
        // Keep byte fields as Vec<u8>: signed bodies are re-parsed from them.
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=src/caps.rs");
    Ok(())
}

/// A message to describe: full name, Rust path (None for map entries), fields.
struct Msg {
    rust: Option<String>,
    fields: Vec<String>,
}

fn static_name(full: &str) -> String {
    format!("S_{}", full.replace('.', "_").to_uppercase())
}

fn upper_camel(s: &str) -> String {
    s.split('_')
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn cap_for(full_field: &str) -> u32 {
    caps::REPEATED_CAPS
        .iter()
        .find(|(n, _)| *n == full_field)
        .map_or(caps::DEFAULT_REPEATED_CAP, |(_, c)| *c)
}

fn collect(
    prefix: &str,
    rust_mod: &str,
    msgs: &[prost_types::DescriptorProto],
    out: &mut BTreeMap<String, Msg>,
) -> Result<(), String> {
    for m in msgs {
        let name = m.name();
        let full = format!("{prefix}.{name}");
        let is_map = m.options.as_ref().is_some_and(|o| o.map_entry());
        let rust = (!is_map).then(|| format!("{rust_mod}::{}", upper_camel(name)));
        let mut fields = Vec::new();
        for f in &m.field {
            let repeated = f.label.unwrap_or(0) == LABEL_REPEATED;
            let ty = f.r#type.unwrap_or(0);
            if ty == TYPE_GROUP {
                return Err(format!("{full}.{}: groups are not supported", f.name()));
            }
            let kind = if ty == TYPE_MESSAGE {
                let target = f.type_name().trim_start_matches('.');
                format!("Kind::Message(&{})", static_name(target))
            } else if !repeated {
                continue; // a singular scalar, string or bytes allocates at most its own bytes
            } else if ty == TYPE_STRING || ty == TYPE_BYTES {
                "Kind::Plain".to_owned()
            } else if [TYPE_DOUBLE, TYPE_FIXED64, TYPE_SFIXED64].contains(&ty) {
                "Kind::Packed(8)".to_owned()
            } else if [TYPE_FLOAT, TYPE_FIXED32, TYPE_SFIXED32].contains(&ty) {
                "Kind::Packed(4)".to_owned()
            } else {
                "Kind::Packed(0)".to_owned() // varints (ints, bools, enums)
            };
            let cap = if repeated {
                cap_for(&format!("{full}.{}", f.name()))
            } else {
                0
            };
            fields.push(format!(
                "Field {{ number: {}, repeated: {repeated}, cap: {cap}, kind: {kind} }}",
                f.number()
            ));
        }
        if fields.len() > 32 {
            return Err(format!("{full}: more than 32 tracked fields"));
        }
        let nested_mod = format!("{rust_mod}::{}", snake(name));
        collect(&full, &nested_mod, &m.nested_type, out)?;
        out.insert(full, Msg { rust, fields });
    }
    Ok(())
}

fn bounds(fds: &prost_types::FileDescriptorSet) -> Result<String, String> {
    let mut msgs = BTreeMap::new();
    for file in &fds.file {
        let package = file.package();
        // prost puts package `ward.v1` in `crate::v1` (see lib.rs).
        let module = package.rsplit('.').next().unwrap_or(package);
        collect(
            package,
            &format!("crate::{module}"),
            &file.message_type,
            &mut msgs,
        )?;
    }
    let mut code = String::from("// Generated by build.rs from the .proto files: do not edit.\n");
    for (full, m) in &msgs {
        let _ = writeln!(
            code,
            "static {}: Schema = Schema {{ name: {full:?}, fields: &[{}] }};",
            static_name(full),
            m.fields.join(", ")
        );
        if let Some(rust) = &m.rust {
            let _ = writeln!(
                code,
                "impl Bounded for {rust} {{ fn schema() -> &'static Schema {{ &{} }} }}",
                static_name(full)
            );
        }
    }
    Ok(code)
}
