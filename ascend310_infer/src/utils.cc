/**
 * File helpers of the Ascend 310 inference harness (see inc/utils.h). Standard library only.
 */
#include "inc/utils.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

namespace deploy {

const char kManifestName[] = "manifest.txt";

namespace {

constexpr size_t kMinStemDigits = 12;

std::string Trim(const std::string &text) {
  const auto not_space = [](unsigned char c) { return std::isspace(c) == 0; };
  const auto begin = std::find_if(text.begin(), text.end(), not_space);
  const auto end = std::find_if(text.rbegin(), text.rend(), not_space).base();
  return begin < end ? std::string(begin, end) : std::string();
}

bool IsStem(const std::string &text) {
  return text.size() >= kMinStemDigits &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

bool ReplaceFile(const std::string &tmp_path, const std::string &path, std::string *error) {
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    // Best-effort cleanup: the rename failure is what gets reported.
    (void)std::remove(tmp_path.c_str());
    *error = "cannot rename " + tmp_path + " to " + path;
    return false;
  }
  return true;
}

}  // namespace

bool ParseArgs(int argc, const char *const *argv, const std::vector<std::string> &known,
               std::map<std::string, std::string> *values, std::string *error) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg(argv[i]);
    const size_t equals = arg.find('=');
    if (arg.rfind("--", 0) != 0 || equals == std::string::npos) {
      *error = "expected --name=value, got '" + arg + "'";
      return false;
    }
    const std::string name = arg.substr(2, equals - 2);
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      *error = "unknown option --" + name;
      return false;
    }
    (*values)[name] = arg.substr(equals + 1);
  }
  return true;
}

bool ReadManifest(const std::string &path, std::vector<std::string> *stems, std::string *error) {
  std::ifstream file(path);
  if (!file) {
    *error = "cannot read " + path + "; write the input folder with preprocess.py";
    return false;
  }
  stems->clear();
  std::string line;
  size_t number = 0;
  while (std::getline(file, line)) {
    ++number;
    const std::string stem = Trim(line);
    if (stem.empty()) {
      continue;
    }
    if (!IsStem(stem)) {
      std::ostringstream message;
      message << path << ", line " << number << ": '" << stem << "' is not a 12-digit image id stem";
      *error = message.str();
      return false;
    }
    stems->push_back(stem);
  }
  if (stems->empty()) {
    *error = path + " lists no images";
    return false;
  }
  return true;
}

bool WriteManifest(const std::string &path, const std::vector<std::string> &stems, std::string *error) {
  std::ostringstream text;
  for (const std::string &stem : stems) {
    text << stem << '\n';
  }
  const std::string content = text.str();
  return WriteBinaryFile(path, content.data(), content.size(), error);
}

std::string JoinPath(const std::string &dir, const std::string &name) {
  if (dir.empty() || dir.back() == '/') {
    return dir + name;
  }
  return dir + "/" + name;
}

std::string TensorFileName(const std::string &stem, size_t index) {
  return stem + "_" + std::to_string(index) + ".bin";
}

bool ReadBinaryFile(const std::string &path, std::vector<char> *data, std::string *error) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) {
    *error = "cannot read " + path;
    return false;
  }
  const std::streamsize size = file.tellg();
  file.seekg(0, std::ios::beg);
  data->resize(static_cast<size_t>(size));
  if (size > 0 && !file.read(data->data(), size)) {
    *error = "short read from " + path;
    return false;
  }
  return true;
}

bool WriteBinaryFile(const std::string &path, const void *data, size_t size, std::string *error) {
  const std::string tmp_path = path + ".tmp";
  {
    std::ofstream file(tmp_path, std::ios::binary | std::ios::trunc);
    if (!file) {
      *error = "cannot write " + tmp_path + " (does the folder exist?)";
      return false;
    }
    file.write(static_cast<const char *>(data), static_cast<std::streamsize>(size));
    if (!file) {
      file.close();
      (void)std::remove(tmp_path.c_str());  // best effort; the write failure is what gets reported
      *error = "write failed for " + tmp_path;
      return false;
    }
  }
  return ReplaceFile(tmp_path, path, error);
}

double Mean(const std::vector<double> &values) {
  if (values.empty()) {
    return 0.0;
  }
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

}  // namespace deploy
