/**
 * File helpers of the Ascend 310 inference harness: the manifest/binary protocol of src/deploy/bin_io.py.
 *
 * Nothing here depends on MindSpore, so these helpers are built and tested on any machine
 * (tests/test_cpp_harness.py); src/main.cc adds the MindSpore C++ API calls.
 */
#ifndef ASCEND310_INFER_INC_UTILS_H_
#define ASCEND310_INFER_INC_UTILS_H_

#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace deploy {

// Name of the manifest that lists the image stems in processing order, one per line.
extern const char kManifestName[];

// Parses "--name=value" arguments. Every name must be in `known`; an argument without "--", "=" or with an
// unknown name is an error. Returns false and sets *error on failure.
bool ParseArgs(int argc, const char *const *argv, const std::vector<std::string> &known,
               std::map<std::string, std::string> *values, std::string *error);

// Reads a manifest: non-blank lines, each a stem of at least 12 digits (the zero-padded COCO image id).
// Fails on an unreadable file, a malformed line (named by number) or an empty list.
bool ReadManifest(const std::string &path, std::vector<std::string> *stems, std::string *error);

// Writes the stems one per line through a temporary file and a rename.
bool WriteManifest(const std::string &path, const std::vector<std::string> &stems, std::string *error);

// "<dir>/<name>" (no separator added when dir is empty or already ends with '/').
std::string JoinPath(const std::string &dir, const std::string &name);

// "<stem>_<index>.bin": tensor `index` of an image (inputs: 0 image, 1 mask, 2 orig_size; outputs: 0 scores,
// 1 labels, 2 boxes).
std::string TensorFileName(const std::string &stem, size_t index);

// Reads a whole file into *data.
bool ReadBinaryFile(const std::string &path, std::vector<char> *data, std::string *error);

// Writes `size` bytes through "<path>.tmp" and a rename, so a reader never sees a partial file.
bool WriteBinaryFile(const std::string &path, const void *data, size_t size, std::string *error);

// Arithmetic mean; 0 for an empty vector.
double Mean(const std::vector<double> &values);

}  // namespace deploy

#endif  // ASCEND310_INFER_INC_UTILS_H_
