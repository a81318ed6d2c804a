// Reading and writing safetensors files (format in safetensors.h).
#include "model/safetensors.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "attnkit/error.h"
#include "attnkit/tensor.h"

namespace attnkit::model {
namespace {

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the format's own limit is 100 MB

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += fmt::format("{}{}", i ? ", " : "", s[i]);
  return r + "]";
}

int64_t dtype_bytes(const std::string& t) {
  if (t == "F32") return 4;
  if (t == "F16" || t == "BF16") return 2;
  return 0;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Error(fmt::format("safetensors: cannot open '{}'", path));
  const auto size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint8_t len_bytes[8];
  if (size < 8 || !f.read(reinterpret_cast<char*>(len_bytes), 8)) {
    throw Error(fmt::format("safetensors: '{}' is {} bytes, shorter than the 8-byte header length", path, size));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];  // little-endian
  if (n > kMaxHeader || n > size - 8) {
    throw Error(fmt::format("safetensors: '{}': header length {} does not fit the file of {} bytes (or exceeds 100 MB)",
                            path, n, size));
  }
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("safetensors: '{}': the header is not valid JSON ({})", path, e.what()));
  }
  if (!j.is_object()) throw Error(fmt::format("safetensors: '{}': expected a JSON object as header", path));
  data_.resize(size - 8 - n);
  f.read(reinterpret_cast<char*>(data_.data()), static_cast<std::streamsize>(data_.size()));
  if (!f) throw Error(fmt::format("safetensors: '{}': could not read the data", path));
  for (const auto& [name, e] : j.items()) {
    if (name == "__metadata__") continue;
    Entry en;
    try {
      en.dtype = e.at("dtype").get<std::string>();
      en.shape = e.at("shape").get<std::vector<int64_t>>();
      const auto off = e.at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2) throw Error("");
      en.begin = off[0];
      en.end = off[1];
    } catch (const std::exception&) {
      throw Error(fmt::format("safetensors: '{}': tensor '{}': expected {{dtype, shape, data_offsets: [begin, end]}}, "
                              "given {}",
                              path, name, e.dump()));
    }
    uint64_t numel = 1;
    for (int64_t s : en.shape) {
      if (s < 0) throw Error(fmt::format("safetensors: '{}': tensor '{}' has a negative size in {}", path, name, shape_str(en.shape)));
      numel *= static_cast<uint64_t>(s);
    }
    const int64_t eb = dtype_bytes(en.dtype);
    if (eb == 0) {
      throw Error(fmt::format("safetensors: '{}': tensor '{}': expected dtype F32, F16 or BF16, given {}", path, name,
                              en.dtype));
    }
    if (en.begin > en.end || en.end > data_.size() || en.end - en.begin != numel * static_cast<uint64_t>(eb)) {
      throw Error(fmt::format("safetensors: '{}': tensor '{}': data_offsets [{}, {}) do not hold {} {} elements of shape "
                              "{} within the {} data bytes",
                              path, name, en.begin, en.end, numel, en.dtype, shape_str(en.shape), data_.size()));
    }
    entries_[name] = std::move(en);
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> r;
  for (const auto& [k, _] : entries_) r.push_back(k);
  return r;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    throw Error(fmt::format("safetensors: '{}': tensor '{}' (shape {}) is missing", path_, name, shape_str(shape)));
  }
  const Entry& e = it->second;
  if (e.shape != shape) {
    throw Error(fmt::format("safetensors: '{}': tensor '{}': expected shape {}, given {}", path_, name, shape_str(shape),
                            shape_str(e.shape)));
  }
  const uint8_t* p = data_.data() + e.begin;
  const size_t n = (e.end - e.begin) / static_cast<size_t>(dtype_bytes(e.dtype));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (e.dtype == "F32") {
      uint32_t u = 0;
      for (int b = 3; b >= 0; --b) u = (u << 8) | p[4 * i + b];
      std::memcpy(&out[i], &u, 4);
    } else {
      const uint16_t u = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
      out[i] = e.dtype == "BF16" ? to_float(bf16{u}) : to_float(f16{u});
    }
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors) {
  nlohmann::json j = nlohmann::json::object();
  uint64_t at = 0;
  for (const NamedTensor& t : tensors) {
    uint64_t n = 1;
    for (int64_t s : t.shape) n *= static_cast<uint64_t>(s);
    j[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {at, at + 4 * n}}};
    at += 4 * n;
  }
  j["__metadata__"] = {{"format", "pt"}};
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Error(fmt::format("safetensors: cannot create '{}'", path));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const NamedTensor& t : tensors) {
    uint64_t n = 1;
    for (int64_t s : t.shape) n *= static_cast<uint64_t>(s);
    std::vector<uint8_t> bytes(4 * n);
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, &t.data[i], 4);
      for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<uint8_t>(u >> (8 * b));
    }
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  if (!f) throw Error(fmt::format("safetensors: could not write '{}'", path));
}

}  // namespace attnkit::model
