//! Acceptance tests: tokenizer training/round trip, JSONL and Parquet shards giving the same pages
//! on two nodes, manifest checks, cache reuse, and parity with the model crate's byte pages.
#![allow(clippy::unwrap_used)]

use apiary_data::{DataError, Dataset, Manifest, Tokenizer, MANIFEST_FILE, PAGES_FILE};
use parquet::basic::{Compression, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type as SchemaType;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn shakespeare_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tinyshakespeare.txt")
}

fn shakespeare() -> String {
    std::fs::read_to_string(shakespeare_path()).unwrap()
}

/// A byte-level BPE tokenizer trained (once per test run) on part of tinyshakespeare, with an
/// `<|endoftext|>` special token; returns the saved tokenizer.json path.
fn bpe_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::AddedToken;

        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("apiary-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Train on the first 200 kB: enough for a few hundred merges, fast in debug builds.
        let corpus = dir.join("corpus.txt");
        let text = shakespeare();
        std::fs::write(&corpus, &text[..200_000]).unwrap();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(700)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tk = tokenizers::Tokenizer::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tk.with_decoder(Some(ByteLevel::default()));
        tk.train_from_files(&mut trainer, vec![corpus.display().to_string()])
            .unwrap();
        let path = dir.join("tokenizer.json");
        tk.save(&path, false).unwrap();
        path
    })
}

fn bpe() -> Tokenizer {
    Tokenizer::from_file(bpe_path()).unwrap()
}

/// Documents: the paragraphs of the first ~300 kB of tinyshakespeare (plus some non-ASCII).
fn documents() -> Vec<String> {
    let text = shakespeare();
    let mut docs: Vec<String> = text[..300_000]
        .split("\n\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.to_string())
        .collect();
    docs.insert(3, "Ünïcödé — “quotes”, 日本語, emoji 🐝\ttab".to_string());
    docs
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let mut s = String::new();
    for (i, d) in docs.iter().enumerate() {
        // Extra fields are ignored; key order must not matter.
        let line = serde_json::json!({ "id": i, "text": d, "url": "https://example.org" });
        s.push_str(&line.to_string());
        s.push('\n');
        if i % 50 == 0 {
            s.push('\n'); // blank lines are skipped
        }
    }
    std::fs::write(path, s).unwrap();
}

/// Writes `docs` as a Parquet file with an `id` column and an optional `text` column (a null row is
/// inserted: nulls are skipped), 100 rows per row group; snappy, or zstd for `zstd = true` when the
/// `zstd` feature is on.
fn write_parquet_with(path: &Path, docs: &[String], zstd: bool) {
    let text = SchemaType::primitive_type_builder("text", PhysicalType::BYTE_ARRAY)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(Some(parquet::basic::LogicalType::String))
        .build()
        .unwrap();
    let id = SchemaType::primitive_type_builder("id", PhysicalType::INT64)
        .with_repetition(Repetition::REQUIRED)
        .build()
        .unwrap();
    let schema = SchemaType::group_type_builder("schema")
        .with_fields(vec![Arc::new(id), Arc::new(text)])
        .build()
        .unwrap();
    let compression = if zstd && cfg!(feature = "zstd") {
        Compression::ZSTD(Default::default())
    } else {
        Compression::SNAPPY
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut rows: Vec<Option<&String>> = docs.iter().map(Some).collect();
    rows.insert(rows.len().min(5), None);
    for (g, chunk) in rows.chunks(100).enumerate() {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..chunk.len() as i64)
            .map(|i| g as i64 * 100 + i)
            .collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = chunk
            .iter()
            .flatten()
            .map(|d| ByteArray::from(d.as_str()))
            .collect();
        let defs: Vec<i16> = chunk.iter().map(|d| i16::from(d.is_some())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn write_parquet(path: &Path, docs: &[String]) {
    write_parquet_with(path, docs, false);
}

/// Every page of a dataset, training then held out.
fn all_pages(ds: &Dataset) -> Vec<Vec<u32>> {
    let mut pages: Vec<Vec<u32>> = (0..ds.train_pages()).map(|i| ds.page(i).unwrap()).collect();
    pages.extend(ds.held_out(usize::MAX).unwrap());
    pages
}

#[test]
fn trained_tokenizer_json_loads_and_round_trips() {
    let path = bpe_path();
    let tok = Tokenizer::from_file(path).unwrap();
    assert!(!tok.is_bytes());
    assert!(
        tok.vocab_size() > 256 && tok.vocab_size() <= 700,
        "{}",
        tok.vocab_size()
    );
    let eos = tok
        .eos_id()
        .expect("<|endoftext|> is the end-of-document token");
    assert_eq!(tok.decode(&[eos]).unwrap(), "<|endoftext|>");
    assert_eq!(
        tok.hash(),
        *blake3::hash(&std::fs::read(path).unwrap()).as_bytes()
    );
    let text = shakespeare();
    for sample in [
        &text[..20_000],
        &text[500_000..520_000], // not seen in training
        "Ünïcödé — “quotes”, 日本語, emoji 🐝\ttab\r\n  spaces  ",
        "",
    ] {
        let ids = tok.encode(sample).unwrap();
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids).unwrap(), sample);
    }
    // BPE actually compresses: far fewer tokens than bytes.
    let ids = tok.encode(&text[..20_000]).unwrap();
    assert!(ids.len() < 12_000, "{} tokens for 20000 bytes", ids.len());
    // Batch encoding agrees with one-at-a-time encoding.
    let docs = vec![text[..1000].to_string(), text[1000..3000].to_string()];
    let batch = tok.encode_batch(docs.clone()).unwrap();
    assert_eq!(batch[0], tok.encode(&docs[0]).unwrap());
    assert_eq!(batch[1], tok.encode(&docs[1]).unwrap());
    assert!(Tokenizer::from_file("/nonexistent/tokenizer.json").is_err());
}

#[test]
fn jsonl_and_parquet_give_same_pages_on_two_nodes() {
    let tok = bpe();
    let eos = tok.eos_id().unwrap();
    let docs = documents();
    let (first, second) = docs.split_at(docs.len() / 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut manifests = Vec::new();
    let mut datasets = Vec::new();
    for node in ["node1", "node2"] {
        for fmt in ["jsonl", "parquet"] {
            let dir = tmp.path().join(node).join(fmt);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, part) in [("shard-000", first), ("shard-001", second)] {
                let p = dir.join(format!("{name}.{fmt}"));
                if fmt == "jsonl" {
                    write_jsonl(&p, part);
                } else {
                    // The second shard zstd-compressed (with the default `zstd` feature).
                    write_parquet_with(&p, part, name == "shard-001");
                }
            }
            let cache = tmp.path().join(node).join(format!("cache-{fmt}"));
            let ds = Dataset::open(&dir, &tok, 128, 0.05, &cache).unwrap();
            assert!(!ds.reused_cache());
            manifests.push(ds.manifest().clone());
            datasets.push(ds);
        }
    }
    #[cfg(feature = "zstd")]
    {
        use parquet::file::reader::FileReader;
        let f = std::fs::File::open(tmp.path().join("node1/parquet/shard-001.parquet")).unwrap();
        let r = parquet::file::serialized_reader::SerializedFileReader::new(f).unwrap();
        let codec = r.metadata().row_group(0).column(1).compression();
        assert!(matches!(codec, Compression::ZSTD(_)), "{codec:?}");
    }
    let (j1, p1, j2, p2) = (&manifests[0], &manifests[1], &manifests[2], &manifests[3]);
    // Same files on two nodes: identical manifests.
    assert_eq!(j1, j2);
    assert_eq!(p1, p2);
    assert_eq!(j1.hash(), j2.hash());
    assert_eq!(datasets[0].hash(), datasets[2].hash());
    // JSONL vs Parquet of the same documents: the same pages (the shard files differ).
    assert_eq!(j1.pages_hash, p1.pages_hash);
    assert_eq!((j1.pages, j1.total_tokens), (p1.pages, p1.total_tokens));
    assert_ne!(j1.shards[0].blake3, p1.shards[0].blake3);
    assert_eq!(j1.shards[0].documents, first.len() as u64);
    assert_eq!(p1.shards[1].documents, second.len() as u64);
    let pages = all_pages(&datasets[0]);
    assert_eq!(pages, all_pages(&datasets[1]));
    assert_eq!(pages, all_pages(&datasets[3]));

    // The pages are exactly the documents' tokens joined by EOS, cut into seq_len + 1.
    let mut stream = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            stream.push(eos);
        }
        stream.extend(tok.encode(d).unwrap());
    }
    assert_eq!(stream.len() as u64, j1.total_tokens);
    let n = stream.len() / 129;
    assert_eq!(pages.len(), n);
    assert_eq!(pages.concat(), stream[..n * 129]);
    let held = ((n as f64 * 0.05).ceil() as usize).max(1);
    assert_eq!(datasets[0].held_out_pages(), held);
    assert_eq!(datasets[0].train_pages(), n - held);
    assert_eq!(datasets[0].vocab_size(), tok.vocab_size());

    // A node can verify its data against a peer's manifest, and a manifest survives JSON.
    datasets[2].verify_against(j1).unwrap();
    assert!(datasets[1].verify_against(j1).is_err());
    let reloaded =
        Manifest::load(&tmp.path().join("node1/cache-jsonl").join(MANIFEST_FILE)).unwrap();
    assert_eq!(&reloaded, j1);
    let verified = Dataset::open_verified(
        &tmp.path().join("node2/jsonl"),
        &tok,
        &tmp.path().join("node2/cache-jsonl"),
        j1,
    )
    .unwrap();
    assert!(verified.reused_cache());
    verified.verify_page_cache().unwrap();
}

#[test]
fn byte_pages_of_a_text_file_match_the_model_crate_rule() {
    let bytes = std::fs::read(shakespeare_path()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (seq_len, frac) = (64usize, 0.1f64);
    let ds = Dataset::open(
        &shakespeare_path(),
        &Tokenizer::bytes(),
        seq_len,
        frac,
        &tmp.path().join("cache"),
    )
    .unwrap();
    // The rule of apiary_model::Dataset::from_bytes, replicated.
    let page_len = seq_len + 1;
    let total = bytes.len() / page_len;
    let held = ((total as f64 * frac).ceil() as usize).max(1);
    let train = total - held;
    let raw = |i: usize| -> Vec<u32> {
        bytes[i * page_len..(i + 1) * page_len]
            .iter()
            .map(|&b| u32::from(b))
            .collect()
    };
    assert_eq!((ds.train_pages(), ds.held_out_pages()), (train, held));
    assert_eq!(ds.vocab_size(), 256);
    assert_eq!(ds.seq_len(), seq_len);
    for i in [
        0,
        1,
        7,
        train / 2,
        train - 1,
        train,
        train + 3,
        5 * train + 11,
    ] {
        assert_eq!(ds.page(i).unwrap(), raw(i % train), "page {i}");
    }
    let held_pages = ds.held_out(5).unwrap();
    assert_eq!(held_pages.len(), 5);
    for (k, p) in held_pages.iter().enumerate() {
        assert_eq!(*p, raw(train + k));
    }
    assert_eq!(ds.held_out(usize::MAX).unwrap().len(), held);
    assert_eq!(ds.manifest().total_tokens, bytes.len() as u64);

    // A directory of .txt files is their concatenation in name order (no separator).
    let dir = tmp.path().join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    let cut = 400_001;
    std::fs::write(dir.join("b.txt"), &bytes[cut..]).unwrap();
    std::fs::write(dir.join("a.txt"), &bytes[..cut]).unwrap();
    std::fs::write(dir.join("notes.md"), "not a shard").unwrap();
    let ds2 = Dataset::open(
        &dir,
        &Tokenizer::bytes(),
        seq_len,
        frac,
        &tmp.path().join("c2"),
    )
    .unwrap();
    assert_eq!(ds2.manifest().pages_hash, ds.manifest().pages_hash);
    assert_eq!(ds2.manifest().shards.len(), 2);
    assert_eq!(ds2.manifest().shards[0].name, "a.txt");

    // Pages can be read from many threads at once.
    std::thread::scope(|s| {
        for t in 0..4 {
            let ds = ds.clone();
            let raw = &raw;
            s.spawn(move || {
                for i in (t..train).step_by(97) {
                    assert_eq!(ds.page(i).unwrap(), raw(i));
                }
            });
        }
    });

    // Too little data or a bad fraction is refused with a clear message.
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "tiny").unwrap();
    let e =
        Dataset::open(&small, &Tokenizer::bytes(), 64, 0.1, &tmp.path().join("c3")).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    let e =
        Dataset::open(&small, &Tokenizer::bytes(), 64, 1.5, &tmp.path().join("c3")).unwrap_err();
    assert!(e.to_string().contains("held_out_fraction"), "{e}");
}

#[test]
fn shard_whose_hash_differs_from_the_manifest_is_refused() {
    let tok = Tokenizer::bytes();
    let docs = documents();
    let tmp = tempfile::tempdir().unwrap();
    let mk = |node: &str| {
        let dir = tmp.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        write_jsonl(&dir.join("s0.jsonl"), &docs[..100]);
        write_parquet(&dir.join("s1.parquet"), &docs[100..]);
        dir
    };
    let a = mk("a");
    let b = mk("b");
    let ds_a = Dataset::open(&a, &tok, 32, 0.1, &tmp.path().join("cache-a")).unwrap();
    let expected = ds_a.manifest().clone();

    // Tamper one character of b's Parquet shard... by rewriting it with one document changed.
    let mut changed = docs[100..].to_vec();
    changed[7].push('!');
    write_parquet(&b.join("s1.parquet"), &changed);
    let cache_b = tmp.path().join("cache-b");
    let e = Dataset::open_verified(&b, &tok, &cache_b, &expected).unwrap_err();
    assert!(
        matches!(&e, DataError::ShardMismatch { name, .. } if name == "s1.parquet"),
        "{e}"
    );
    assert!(e.to_string().contains("s1.parquet"), "{e}");
    // Refused before tokenizing anything: no cache was written.
    assert!(!cache_b.join(PAGES_FILE).exists());

    // Opening without a manifest works, but verifying against the peer's names the shard.
    let ds_b = Dataset::open(&b, &tok, 32, 0.1, &cache_b).unwrap();
    let e = ds_b.verify_against(&expected).unwrap_err();
    assert!(e.to_string().contains("s1.parquet"), "{e}");
    assert_ne!(ds_b.hash(), ds_a.hash());

    // Byte-level tampering of a JSONL shard after the cache was built.
    let p = a.join("s0.jsonl");
    let mut raw = std::fs::read(&p).unwrap();
    let i = raw.iter().position(|&c| c == b'e').unwrap();
    raw[i] = b'E';
    std::fs::write(&p, raw).unwrap();
    let e = Dataset::open_verified(&a, &tok, &tmp.path().join("cache-a"), &expected).unwrap_err();
    assert!(e.to_string().contains("s0.jsonl"), "{e}");

    // Missing and extra shards are named too.
    let c = mk("c");
    std::fs::remove_file(c.join("s1.parquet")).unwrap();
    let e = Dataset::open_verified(&c, &tok, &tmp.path().join("cache-c"), &expected).unwrap_err();
    assert!(
        e.to_string().contains("s1.parquet") && e.to_string().contains("missing"),
        "{e}"
    );
    let d = mk("d");
    std::fs::write(d.join("zz.txt"), "extra").unwrap();
    let e = Dataset::open_verified(&d, &tok, &tmp.path().join("cache-d"), &expected).unwrap_err();
    assert!(e.to_string().contains("zz.txt"), "{e}");
    // A different tokenizer is refused as well.
    let e = Dataset::open_verified(&mk("e"), &bpe(), &tmp.path().join("cache-e"), &expected)
        .unwrap_err();
    assert!(e.to_string().contains("tokenizer"), "{e}");
}

#[test]
fn malformed_jsonl_is_refused_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let good = shakespeare()[..5000].to_string();
    let cases = [
        (
            "{\"text\": \"ok\"}\n\n{\"text\": \"fine\"}\n{\"text\": broken}\n",
            ":4",
        ),
        ("{\"text\": \"ok\"}\n{\"body\": \"no text field\"}\n", ":2"),
        ("{\"text\": 42}\n", ":1"),
    ];
    for (k, (content, loc)) in cases.iter().enumerate() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), &good).unwrap();
        std::fs::write(dir.join("b.jsonl"), content).unwrap();
        let e = Dataset::open(
            &dir,
            &Tokenizer::bytes(),
            16,
            0.1,
            &tmp.path().join(format!("c{k}")),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DataError::Shard { .. }), "{msg}");
        assert!(msg.contains(&format!("b.jsonl{loc}")), "{msg}");
    }
    // A Parquet file without a `text` column, and a file that is not Parquet at all.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x.parquet"), "not parquet").unwrap();
    let e = Dataset::open(&dir, &Tokenizer::bytes(), 16, 0.1, &tmp.path().join("cp")).unwrap_err();
    assert!(e.to_string().contains("x.parquet"), "{e}");
    // Invalid UTF-8 in a text shard: fine for bytes, refused (with the offset) for BPE.
    std::fs::remove_file(dir.join("x.parquet")).unwrap();
    let mut bad = good.clone().into_bytes();
    bad[1234] = 0xFF;
    std::fs::write(dir.join("bad.txt"), bad).unwrap();
    Dataset::open(&dir, &Tokenizer::bytes(), 16, 0.1, &tmp.path().join("cb")).unwrap();
    let e = Dataset::open(&dir, &bpe(), 16, 0.1, &tmp.path().join("cb2")).unwrap_err();
    assert!(
        e.to_string().contains("bad.txt") && e.to_string().contains("1234"),
        "{e}"
    );
    // An empty directory.
    std::fs::remove_file(dir.join("bad.txt")).unwrap();
    let e = Dataset::open(&dir, &Tokenizer::bytes(), 16, 0.1, &tmp.path().join("ce")).unwrap_err();
    assert!(e.to_string().contains("no shards"), "{e}");
}

#[test]
fn cache_is_reused_and_rebuilt_when_inputs_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let docs = documents();
    write_jsonl(&dir.join("a.jsonl"), &docs[..200]);
    let cache = tmp.path().join("cache");
    let pages_file = cache.join(PAGES_FILE);
    let mtime = || std::fs::metadata(&pages_file).unwrap().modified().unwrap();

    let ds = Dataset::open(&dir, &Tokenizer::bytes(), 64, 0.1, &cache).unwrap();
    assert!(!ds.reused_cache());
    let (m0, t0) = (ds.manifest().clone(), mtime());
    std::thread::sleep(std::time::Duration::from_millis(20));

    let again = Dataset::open(&dir, &Tokenizer::bytes(), 64, 0.1, &cache).unwrap();
    assert!(again.reused_cache());
    assert_eq!(again.manifest(), &m0);
    assert_eq!(mtime(), t0);
    assert_eq!(again.page(3).unwrap(), ds.page(3).unwrap());

    // Another held-out fraction reuses the pages and only changes the split.
    let split = Dataset::open(&dir, &Tokenizer::bytes(), 64, 0.25, &cache).unwrap();
    assert!(split.reused_cache());
    assert_eq!(mtime(), t0);
    assert!(split.held_out_pages() > ds.held_out_pages());
    assert_eq!(split.manifest().pages_hash, m0.pages_hash);

    // Another tokenizer rebuilds.
    let tok = bpe();
    let b = Dataset::open(&dir, &tok, 64, 0.1, &cache).unwrap();
    assert!(!b.reused_cache());
    assert_ne!(b.manifest().tokenizer_hash, m0.tokenizer_hash);
    assert_ne!(b.manifest().pages_hash, m0.pages_hash);
    assert!(b.manifest().total_tokens < m0.total_tokens);
    assert!(Dataset::open(&dir, &tok, 64, 0.1, &cache)
        .unwrap()
        .reused_cache());
    // Same tokenizer.json without the end-of-document separator: a different token stream.
    let no_eos = tok.clone().with_eos(None).unwrap();
    let c = Dataset::open(&dir, &no_eos, 64, 0.1, &cache).unwrap();
    assert!(!c.reused_cache());
    assert_eq!(
        c.manifest().total_tokens + (c.manifest().shards[0].documents - 1),
        b.manifest().total_tokens
    );
    // Another seq_len rebuilds.
    let d = Dataset::open(&dir, &no_eos, 32, 0.1, &cache).unwrap();
    assert!(!d.reused_cache());
    // A changed shard rebuilds.
    write_jsonl(&dir.join("a.jsonl"), &docs[..150]);
    let e = Dataset::open(&dir, &no_eos, 32, 0.1, &cache).unwrap();
    assert!(!e.reused_cache());
    assert!(e.manifest().total_tokens < d.manifest().total_tokens);
    // A truncated page cache is detected and rebuilt; a corrupted one fails verification.
    let len = std::fs::metadata(&pages_file).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages_file)
        .unwrap();
    f.set_len(len - 2).unwrap();
    drop(f);
    let g = Dataset::open(&dir, &no_eos, 32, 0.1, &cache).unwrap();
    assert!(!g.reused_cache());
    let mut raw = std::fs::read(&pages_file).unwrap();
    raw[10] ^= 1;
    std::fs::write(&pages_file, raw).unwrap();
    let h = Dataset::open(&dir, &no_eos, 32, 0.1, &cache).unwrap();
    assert!(h.reused_cache());
    assert!(h.verify_page_cache().is_err());
}

/// CPU seconds used by this process so far (Linux `/proc/self/stat`, 10 ms ticks), or NaN.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// Build throughput on tinyshakespeare (prints MB/s of text; no assertion on speed). Run with
/// `cargo test -p apiary-data --release --test dataset -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let text = shakespeare();
    let mb = text.len() as f64 / 1e6;
    let docs: Vec<String> = text.split("\n\n").map(str::to_string).collect();
    let tmp = tempfile::tempdir().unwrap();
    for fmt in ["txt", "jsonl", "parquet"] {
        let dir = tmp.path().join(fmt);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("shard.{fmt}"));
        match fmt {
            "txt" => std::fs::write(&p, &text).unwrap(),
            "jsonl" => write_jsonl(&p, &docs),
            _ => write_parquet(&p, &docs),
        }
        for (name, tok) in [("bytes", Tokenizer::bytes()), ("bpe", bpe())] {
            let cache = tmp.path().join(format!("cache-{fmt}-{name}"));
            let (t, cpu) = (std::time::Instant::now(), cpu_secs());
            let ds = Dataset::open(&dir, &tok, 1024, 0.01, &cache).unwrap();
            let build = t.elapsed().as_secs_f64();
            let cpu = cpu_secs() - cpu;
            let t = std::time::Instant::now();
            let again = Dataset::open(&dir, &tok, 1024, 0.01, &cache).unwrap();
            let reopen = t.elapsed().as_secs_f64();
            assert!(again.reused_cache());
            let t = std::time::Instant::now();
            let n = ds.train_pages();
            for i in 0..n {
                std::hint::black_box(ds.page(i).unwrap());
            }
            let read = t.elapsed().as_secs_f64();
            println!(
                "{fmt:8} {name:6} build {:7.1} MB/s wall, {:7.1} MB/CPU-s ({build:.3} s, {} tokens), \
                 reopen {reopen:.3} s, page reads {:.0} pages/s",
                mb / build,
                mb / cpu,
                ds.manifest().total_tokens,
                n as f64 / read
            );
        }
    }
}
