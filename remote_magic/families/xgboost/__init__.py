"""The XGBoost family. This package's top level is light: `bounds` (parameter bounds, the leaf floor)
is read by the server's API process without XGBoost; `family` holds the code that imports it."""
