"""stockout-cancel: cancel CVS payment barcodes at iamport for orders we cannot ship."""
