//! Portcullis policy language: parse, validate, evaluate, classify.
