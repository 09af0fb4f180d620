//! Fuzz targets of the wire protocol's parsers (run by `uplink_fuzz::fuzz`; see its docs
//! for the budget). Each states the contract a hostile input must not break.

use proptest::prelude::*;
use uplink_fuzz::{fuzz, mutated_text, proptest};

use crate::wire::{self, ChunkPageQuery, Route};

const ID: &str = "0123456789abcdef0123456789abcdef";

/// Every path the protocol defines, and a few near misses.
fn route_seeds() -> Vec<String> {
    vec![
        wire::PATH_PING.into(),
        wire::PATH_UPLOADS.into(),
        wire::upload_path(ID),
        wire::chunk_path(ID, 4_194_304),
        wire::chunk_resume_path(ID, 0),
        wire::chunk_page_path(ID, 8, 100),
        format!("{}/{ID}/chunks", wire::PATH_UPLOADS),
        wire::complete_path(ID),
        wire::object_path("scan.ply"),
        format!("{}/{ID}/chunks/007", wire::PATH_UPLOADS),
    ]
}

/// The path a parsed route is served under: one URL per resource.
fn render(route: &Route<'_>) -> String {
    match route {
        Route::Ping => wire::PATH_PING.into(),
        Route::Uploads => wire::PATH_UPLOADS.into(),
        Route::Upload(id) => wire::upload_path(id),
        Route::Chunk(id, off) => wire::chunk_path(id, *off),
        Route::ChunkResume(id, off) => wire::chunk_resume_path(id, *off),
        Route::Chunks(id) => format!("{}/{id}/chunks", wire::PATH_UPLOADS),
        Route::Complete(id) => wire::complete_path(id),
        Route::Object(name) => wire::object_path(name),
    }
}

#[test]
fn fuzz_parse_route_accepts_only_canonical_paths() {
    let seeds = route_seeds();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    fuzz("parse_route", mutated_text(&seeds), |path| {
        if let Some(route) = wire::parse_route(&path) {
            // A path that parses is the one URL of its resource: "007", "+7", a trailing
            // slash or an upper-case id would alias another request's URL.
            prop_assert_eq!(render(&route), path.clone());
            if let Route::Upload(id)
            | Route::Chunk(id, _)
            | Route::ChunkResume(id, _)
            | Route::Chunks(id)
            | Route::Complete(id) = route
            {
                prop_assert!(wire::is_valid_id(id));
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_chunk_page_query_parses_what_it_renders_and_bounds_the_page() {
    let seeds = [
        "from=0&limit=100",
        "limit=1",
        "from=18446744073709551615",
        "",
    ];
    fuzz("chunk_page_query", mutated_text(&seeds), |q| {
        if let Some(parsed) = ChunkPageQuery::parse(Some(&q)) {
            prop_assert!((1..=wire::MAX_CHUNK_PAGE).contains(&parsed.limit()));
        }
        Ok(())
    });
    fuzz(
        "chunk_page_query_round_trip",
        (any::<u64>(), proptest::option::of(any::<usize>())),
        |(from, limit)| {
            let q = ChunkPageQuery { from, limit };
            let text = match limit {
                Some(l) => format!("from={from}&limit={l}"),
                None => format!("from={from}"),
            };
            prop_assert_eq!(ChunkPageQuery::parse(Some(&text)), Some(q));
            Ok(())
        },
    );
}

#[test]
fn fuzz_object_names_sanitize_to_valid_names() {
    let seeds = [
        "scan.ply",
        ".hidden",
        "../../etc/passwd",
        "a/b",
        "",
        "日本語.jpg",
    ];
    fuzz("object_names", mutated_text(&seeds), |name| {
        let clean = wire::sanitize_object_name(&name);
        prop_assert!(
            wire::is_valid_object_name(&clean),
            "{:?} -> {:?}",
            name,
            clean
        );
        if wire::is_valid_object_name(&name) {
            prop_assert_eq!(clean, name, "a valid name is kept as it is");
        }
        Ok(())
    });
}

#[test]
fn fuzz_hex32_takes_exactly_64_hex_digits() {
    let seeds = [&"ab".repeat(32)[..], &"AB".repeat(32)[..], "00"];
    fuzz("hex32", mutated_text(&seeds), |s| {
        if let Some(bytes) = crate::parse_hex32(&s) {
            prop_assert_eq!(hex::encode(bytes), s.trim().to_ascii_lowercase());
        }
        Ok(())
    });
}
