// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON mapping each tensor name to {dtype, shape, data_offsets
// [begin, end)} (offsets into the data that follows the header), an optional "__metadata__"
// entry of strings, then the raw little-endian data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace attnkit::model {

class SafetensorsFile {
 public:
  // Reads and checks the whole file: header length, JSON, every entry's dtype, shape and
  // offsets against the data size. Throws attnkit::Error naming the file and the problem.
  explicit SafetensorsFile(const std::string& path);

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<std::string> names() const;
  // The tensor converted to f32; throws attnkit::Error when it is missing or its shape is not
  // `shape` (the message names the tensor, the expected shape and the one in the file).
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
  };
  std::string path_;
  std::vector<uint8_t> data_;  // the bytes after the header
  std::map<std::string, Entry> entries_;
};

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};
// Writes f32 tensors as a safetensors file.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors);

}  // namespace attnkit::model
