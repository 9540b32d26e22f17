//! A reader for GGUF files (llama.cpp's model format), versions 2 and 3.
//!
//! Layout: magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata count, the metadata key/value pairs,
//! the tensor infos (name, dims innermost first, ggml type, offset into the data section), padding to
//! `general.alignment` (default 32), then the tensor data. Every read is bounds-checked: a truncated or malformed
//! file gives [`Error`] naming what was wrong and where, never a panic.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Guards against absurd counts in a corrupted header before we allocate for them.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, whatever its integer width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// The shape in PyTorch order (outermost first).
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data: Bytes,
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays on disk until read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        // SAFETY: the map is read-only and private to this process; a model file changed under a running
        // server is outside what we support (llama.cpp and safetensors make the same assumption).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), e))?;
        Self::parse(Bytes::Mapped(map)).map_err(|e| e.in_file(path.display()))
    }

    /// Parses a GGUF image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(data: Bytes) -> Result<Self> {
        let mut r = Reader { buf: &data, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::unsupported(format!("GGUF version {version} (only 2 and 3 are read)")));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of {key}"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&format!("dims of {name}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::format(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("dim of {name}"))?;
                if d == 0 || d > 1 << 40 {
                    return Err(Error::format(format!("tensor {name}: dimension {d}")));
                }
                dims.push(d);
            }
            let raw_ty = r.u32(&format!("type of {name}"))?;
            let ty = GgmlType::from_u32(raw_ty)
                .ok_or_else(|| Error::unsupported(format!("tensor {name}: ggml type {raw_ty}")))?;
            let offset = r.u64(&format!("offset of {name}"))?;
            tensors.push(TensorInfo { name, dims, ty, offset, size: 0 });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(Error::format(format!("general.alignment {v:?}"))),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = data.len() as u64;
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter_mut().enumerate() {
            let n = t.n_elements();
            let size = t.ty.bytes_for(n).ok_or_else(|| {
                Error::format(format!(
                    "tensor {}: {n} elements is not a whole number of {:?} blocks ({} each)",
                    t.name,
                    t.ty,
                    t.ty.block_len()
                ))
            })?;
            if !t.offset.is_multiple_of(alignment) {
                return Err(Error::format(format!(
                    "tensor {}: offset {} not aligned to {alignment}",
                    t.name, t.offset
                )));
            }
            let start = data_start
                .checked_add(t.offset)
                .ok_or_else(|| Error::format(format!("tensor {}: offset overflows", t.name)))?;
            let end = start.checked_add(size).filter(|&e| e <= file_len).ok_or_else(|| {
                Error::format(format!(
                    "tensor {} needs bytes {start}..{} but the file has {file_len} (truncated?)",
                    t.name,
                    start.saturating_add(size)
                ))
            })?;
            t.offset = start;
            t.size = end - start;
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::format(format!("tensor {} appears twice", t.name)));
            }
        }
        Ok(Self { version, metadata, tensors, by_name, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.data[info.offset as usize..(info.offset + info.size) as usize]
    }

    /// Dequantizes a tensor to f32, in ggml element order.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        crate::quant::dequantize(info.ty, self.tensor_bytes(info), info.n_elements() as usize)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| Error::format(format!("truncated at byte {} reading {what} ({n} bytes)", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(Error::format(format!("{what} {n} is implausible")));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| Error::format(format!("{what}: length {len}")))?;
        let bytes = self.take(len, what)?;
        // Some converters write non-UTF-8 token strings; keep them readable rather than failing the load.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::format(format!("{key}: bool byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(Error::format(format!("{key}: arrays nested too deep")));
                }
                let item_ty = self.u32(key)?;
                let n = self.count(key)?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(Error::format(format!("{key}: unknown metadata type {t}"))),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a small GGUF image: one metadata string and one F32 tensor of 4 elements.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_a_tiny_file() {
        let g = GgufFile::from_bytes(tiny_gguf()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get("general.architecture").and_then(Value::as_str), Some("llama"));
        let t = g.tensor("w").unwrap();
        assert_eq!(t.torch_shape(), vec![2, 2]);
        assert_eq!(g.dequantize(t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for n in 0..full.len() {
            let err = GgufFile::from_bytes(full[..n].to_vec()).unwrap_err();
            assert!(err.is_format() || err.is_unsupported(), "cut at {n}: {err}");
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let full = tiny_gguf();
        // Flip each byte of the header in turn; parsing must return Ok or Err, never panic or hang.
        for i in 0..full.len() - 16 {
            for v in [0u8, 0xff, 0x7f, 0x09] {
                let mut b = full.clone();
                b[i] = v;
                let _ = GgufFile::from_bytes(b);
            }
        }
    }

    #[test]
    fn rejects_other_files() {
        let err = GgufFile::from_bytes(b"PK\x03\x04 not a model at all".to_vec()).unwrap_err();
        assert!(err.to_string().contains("not a GGUF file"), "{err}");
    }
}
