//! Reading `pytorch_model.bin`: a state dict written by Python's `torch.save` (a zip archive with
//! `{name}/data.pkl`, a pickle of an `OrderedDict` of tensors, and `{name}/data/{key}`, the raw
//! little-endian bytes of each storage). libtorch's C++ loader cannot read these (it expects its
//! own format), and older hub checkpoints — BiomedBERT among them — ship only this file.
//!
//! The pickle machine here knows the opcodes `torch.save` emits (protocols 2–4) and the three
//! callables a state dict uses: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and
//! `torch._utils._rebuild_parameter`. Nothing is ever executed: any other callable is an error
//! naming it, so a hostile file cannot do more than fail to load.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::{ModelError, Result};

#[derive(Debug, Clone)]
enum Value {
    None,
    /// A bool or float (`requires_grad`, …): carried, never needed.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        key: String,
        kind: Kind,
    },
    Tensor(TensorRef),
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    key: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Runs the pickle in `data`; returns the object it builds.
fn unpickle(data: &[u8]) -> std::result::Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len());
        let end = end.ok_or_else(|| format!("truncated pickle at byte {pos}"))?;
        let slice = &data[*pos..end];
        *pos = end;
        Ok(slice)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    };
    let pop_mark = |stack: &mut Vec<Value>| -> std::result::Result<Vec<Value>, String> {
        let mark = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK missing")?;
        let items = stack.split_off(mark + 1);
        stack.pop();
        Ok(items)
    };
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| "pickle string is not UTF-8".to_string())
    };
    loop {
        let op = take(&mut pos, 1)?[0];
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 | 0x89 => stack.push(Value::Scalar),
            b'K' => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Value::Int(i64::from(i32::from_le_bytes([
                    b[0], b[1], b[2], b[3],
                ]))));
            }
            0x8a => {
                let n = usize::from(take(&mut pos, 1)?[0]);
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return Err("pickle LONG1 wider than 64 bits".into());
                }
                let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                }; 8];
                buf[..n].copy_from_slice(b);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                take(&mut pos, 8)?;
                stack.push(Value::Scalar);
            }
            b'X' => {
                let n = u32_at(take(&mut pos, 4)?) as usize;
                let s = text(take(&mut pos, n)?)?;
                stack.push(Value::Str(s));
            }
            0x8c => {
                let n = usize::from(take(&mut pos, 1)?[0]);
                let s = text(take(&mut pos, n)?)?;
                stack.push(Value::Str(s));
            }
            b'c' => {
                let line = |pos: &mut usize| -> std::result::Result<String, String> {
                    let rest = &data[*pos..];
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("pickle GLOBAL unterminated")?;
                    let s = text(&rest[..end])?;
                    *pos += end + 1;
                    Ok(s)
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err("pickle STACK_GLOBAL without names".into()),
                }
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' => {
                let i = u32::from(take(&mut pos, 1)?[0]);
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or("pickle BINPUT on empty stack")?,
                );
            }
            b'r' => {
                let i = u32_at(take(&mut pos, 4)?);
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or("pickle LONG_BINPUT on empty stack")?,
                );
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or("pickle MEMOIZE on empty stack")?,
                );
            }
            b'h' => {
                let i = u32::from(take(&mut pos, 1)?[0]);
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or("pickle BINGET of an unknown slot")?,
                );
            }
            b'j' => {
                let i = u32_at(take(&mut pos, 4)?);
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or("pickle LONG_BINGET of an unknown slot")?,
                );
            }
            b'a' => {
                let item = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(items)) => items.push(item),
                    _ => return Err("pickle APPEND to a non-list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err("pickle APPENDS to a non-list".into()),
                }
            }
            b's' => {
                let value = pop(&mut stack)?;
                let key = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(entries)) => entries.push((key, value)),
                    _ => return Err("pickle SETITEM on a non-dict".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Some(Value::Dict(entries)) = stack.last_mut() else {
                    return Err("pickle SETITEMS on a non-dict".into());
                };
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    entries.push((k, v));
                }
            }
            b'b' => {
                pop(&mut stack)?; // BUILD: state of an OrderedDict (its _metadata), not needed
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let Value::Tuple(fields) = pid else {
                    return Err("pickle persistent id is not a tuple".into());
                };
                match fields.as_slice() {
                    [
                        Value::Str(tag),
                        Value::Global(_, class),
                        Value::Str(key),
                        ..,
                    ] if tag == "storage" => {
                        let kind = storage_kind(class)
                            .ok_or_else(|| format!("unsupported storage type {class}"))?;
                        stack.push(Value::Storage {
                            key: key.clone(),
                            kind,
                        });
                    }
                    _ => return Err("pickle persistent id is not a storage".into()),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let Value::Tuple(args) = args else {
                    return Err("pickle REDUCE without an argument tuple".into());
                };
                let Value::Global(module, name) = callable else {
                    return Err("pickle REDUCE of a non-global".into());
                };
                let value = match (module.as_str(), name.as_str(), args.as_slice()) {
                    ("collections", "OrderedDict", []) => Value::Dict(Vec::new()),
                    (
                        "torch._utils",
                        "_rebuild_tensor_v2",
                        [
                            Value::Storage { key, kind },
                            Value::Int(offset),
                            size,
                            stride,
                            ..,
                        ],
                    ) => Value::Tensor(TensorRef {
                        key: key.clone(),
                        kind: *kind,
                        offset: *offset,
                        size: ints(size).ok_or("tensor size is not a tuple of ints")?,
                        stride: ints(stride).ok_or("tensor stride is not a tuple of ints")?,
                    }),
                    ("torch._utils", "_rebuild_parameter", [tensor @ Value::Tensor(_), ..]) => {
                        tensor.clone()
                    }
                    _ => {
                        return Err(format!(
                            "pickle calls {module}.{name}, which a state dict does not use; refusing"
                        ));
                    }
                };
                stack.push(value);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    pos - 1
                ));
            }
        }
    }
}

/// The named tensors of a `torch.save`d state dict.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let fail = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        fail(format!(
            "not a torch.save zip archive ({e}); legacy (pre-1.6) files are not supported"
        ))
    })?;
    let pickle_name = archive
        .file_names()
        .find(|n| n.ends_with("/data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| fail("no data.pkl in the archive".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        Ok(bytes)
    };
    let root = unpickle(&read(&pickle_name)?).map_err(fail)?;
    let Value::Dict(entries) = root else {
        return Err(fail(
            "the pickle is not a dict of tensors (a state dict)".into(),
        ));
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let (Value::Str(name), Value::Tensor(t)) = (name, value) else {
            continue; // non-tensor entries (none in a model's state dict)
        };
        if !storages.contains_key(&t.key) {
            let bytes = read(&format!("{prefix}data/{}", t.key))?;
            let width = t.kind.elt_size_in_bytes();
            if bytes.len() % width != 0 {
                return Err(fail(format!("storage {} has a partial element", t.key)));
            }
            let storage = Tensor::f_from_data_size(&bytes, &[(bytes.len() / width) as i64], t.kind)
                .map_err(|e| fail(format!("storage {}: {e}", t.key)))?;
            storages.insert(t.key.clone(), storage);
        }
        let storage = &storages[&t.key];
        let needed: i64 = t.offset
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(s, st)| (s - 1).max(0) * st)
                .sum::<i64>()
            + 1;
        if t.size.len() != t.stride.len() || needed > storage.numel() as i64 {
            return Err(fail(format!("{name}: size/stride reach past its storage")));
        }
        let tensor = storage
            .f_as_strided(&t.size, &t.stride, t.offset)
            .and_then(|v| v.f_contiguous())
            .map_err(|e| fail(format!("{name}: {e}")))?;
        out.push((name, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_pickles_are_refused_not_run() {
        // GLOBAL os.system, then REDUCE with ("echo",): the classic pickle exploit.
        let exploit = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.";
        let err = unpickle(exploit).expect_err("refused");
        assert!(err.contains("os.system"), "{err}");
        assert!(
            unpickle(b"\x80\x02")
                .expect_err("truncated")
                .contains("truncated")
        );
        assert!(
            unpickle(b"\x80\x02t.")
                .expect_err("no mark")
                .contains("MARK")
        );
        assert!(
            unpickle(b"\x80\x02\xff")
                .expect_err("opcode")
                .contains("0xff")
        );
        // A plain dict of ints parses.
        let ok = unpickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x07u.").expect("dict");
        assert!(matches!(ok, Value::Dict(ref e) if e.len() == 1));
    }
}
